"""The one intervention mechanism: validation before any change, composition order, bit-exact restore."""

import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.intervene import InterventionError, Lever, Plan, Rule, apply, register_lever, restore
from sparsescope.record.calibration import calibrate
from tiny import tiny_model


@register_lever("_test_affine")
def _affine(ctx, scale=1.0, shift=0.0, w_scale=1.0):
    class Affine(Lever):
        def transform_input(self, x):
            return x * scale + shift

        def transform_weight(self, w):
            return w * w_scale

    return Affine()


def snapshot(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def same(lm, snap):
    return all(torch.equal(snap[k], v) for k, v in lm.model.state_dict().items())


IDS = torch.tensor([[5, 17, 42, 9, 77, 3]])


@pytest.mark.parametrize("plan, needle", [
    (Plan([Rule("no_such_lever")]), "unknown lever"),
    (Plan([Rule("_test_affine", layers=[7])]), "layer 7"),
    (Plan([Rule("_test_affine", sites=["mlp.W_gate"])]), "lacks"),
    (Plan([Rule("_test_affine", params={"bogus": 1})]), "bad parameters"),
])
def test_bad_plans_leave_the_model_untouched(plan, needle):
    lm = tiny_model("gpt2")
    snap = snapshot(lm)
    with pytest.raises(UserError, match=needle):  # InterventionError is a UserError
        apply(lm, plan)
    assert same(lm, snap) and lm._applied is None
    assert not any(type(m).__name__ == "Wrapped" for m in lm.model.modules())


def test_rules_compose_in_order_and_restore_bit_exactly():
    lm = tiny_model("llama")
    snap = snapshot(lm)
    down = lm.sites.linear(1, "mlp.W_out")
    with torch.no_grad():
        dense = lm.model(IDS).logits
    plan = Plan([Rule("_test_affine", {"scale": 2.0}, layers=[1], sites=["mlp.W_out"]),
                 Rule("_test_affine", {"shift": 1.0, "w_scale": 3.0}, layers=[1], sites=["mlp.W_out"])])
    z = torch.randn(3, 64)
    with apply(lm, plan) as applied:
        assert list(applied.levers) == ["blocks.1.mlp.W_out"] and len(applied.levers["blocks.1.mlp.W_out"]) == 2
        assert torch.equal(down.weight, snap["model.layers.1.mlp.down_proj.weight"] * 3.0)
        wrapped = lm.model.model.layers[1].mlp.down_proj
        assert wrapped is not down and wrapped.original is down
        with torch.no_grad():  # input transforms in rule order: (z·2)+1, not (z+1)·2
            assert torch.equal(wrapped(z), down(z * 2.0 + 1.0))
        with pytest.raises(InterventionError, match="already"):
            apply(lm, plan)
    with torch.no_grad():
        after = lm.model(IDS).logits
    assert torch.equal(dense, after) and same(lm, snap)
    assert lm.model.model.layers[1].mlp.down_proj is down
    with pytest.raises(InterventionError, match="nothing to restore"):
        restore(lm)


def test_plan_yaml_round_trip_and_bundled_levers(tmp_path):
    plan = Plan([Rule("prune", {"method": "magnitude", "sparsity": 0.5}, layers=[0], sites=["mlp.W_in"])], name="p")
    path = tmp_path / "plan.yaml"
    plan.to_yaml(path)
    assert Plan.from_yaml(path) == plan
    lm = tiny_model("llama")
    with apply(lm, Plan.from_yaml(path)):  # "prune" registers itself; the caller imported nothing
        w = lm.sites.linear(0, "mlp.W_in").weight
        assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe rules")
    with pytest.raises(UserError, match="UTF-8 YAML"):
        Plan.from_yaml(tmp_path / "bad.yaml")


def test_calibration_statistics_and_empty_text():
    lm = tiny_model("llama")
    text = "the quick brown fox jumps over the lazy dog " * 6
    cal = calibrate(lm, text, seq_len=32)
    box = []
    h = lm.sites.linear(0, "mlp.W_out").register_forward_pre_hook(lambda m, a: box.append(a[0].reshape(-1, 64)))
    ids = torch.tensor(lm.tokenizer(text)["input_ids"])
    with torch.no_grad():
        for chunk in ids[: len(ids) // 32 * 32].view(-1, 32):
            lm.model(chunk[None])
    h.remove()
    x = torch.cat(box)
    assert torch.allclose(cal["blocks.0.mlp.W_out"]["act_norm"], x.pow(2).sum(0).sqrt(), rtol=1e-5)
    assert int(cal["blocks.0.mlp.W_out"]["n_tokens"]) == x.shape[0]
    with pytest.raises(UserError, match="empty"):
        calibrate(lm, "")


@pytest.mark.parametrize("arch, fused", [("gpt2", "attn.c_attn"), ("gpt_neox", "attention.query_key_value")])
def test_a_rule_on_one_slice_of_a_fused_qkv_linear_is_refused(arch, fused):
    lm = tiny_model(arch)
    snap = snapshot(lm)
    for sites in (["attn.W_Q"], ["attn.W_K", "mlp.W_in"], ["attn.W_V", "attn.W_Q"]):
        with pytest.raises(InterventionError, match=f"fused linear '{fused}'.*name all of attn.W_Q, attn.W_K, attn.W_V"):
            apply(lm, Plan([Rule("_test_affine", {"w_scale": 2.0}, sites=sites)]))
        assert same(lm, snap)  # nothing applied
    before = lm.forward(IDS)
    apply(lm, Plan([Rule("_test_affine", {"w_scale": 2.0}, layers=[0],
                        sites=["attn.W_Q", "attn.W_K", "attn.W_V"])]))
    assert not torch.allclose(lm.forward(IDS), before)  # all three named: the fused linear is changed
    restore(lm)
    assert same(lm, snap)

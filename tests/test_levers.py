"""The weight levers through intervene: exact masks and formats, bit-exact restore, clear errors on bad input."""

import math

import numpy as np
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.intervene import Plan, Rule, apply
from sparsescope.models.sites import linear_weight
from sparsescope.record.calibration import calibrate
from sparsescope.levers.prune import global_magnitude_plan
from sparsescope.weights.sensitivity import essential_sparsity
from tiny import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog near a quiet river bank; " * 6


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def calib(lm):
    return calibrate(lm, TEXT)


def snapshot(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def logits(lm):
    ids = torch.tensor([[5, 9, 14, 20, 33, 41, 7, 3]])
    with torch.no_grad():
        return lm.forward(ids, torch.ones_like(ids))


def weights(lm):
    return {(layer, ws): linear_weight(lm.sites.linear(layer, ws)).detach().clone()
            for layer, ws in lm.sites.linear_names()}


PLANS = [
    [Rule("prune", {"method": "magnitude", "sparsity": 0.5})],
    [Rule("prune", {"method": "wanda", "sparsity": 0.3})],
    [Rule("prune", {"method": "random", "sparsity": 0.7, "seed": 3})],
    [Rule("prune", {"method": "magnitude", "nm": "2:4"})],
    [Rule("quant", {"bits": 8})],
    [Rule("quant", {"bits": 4, "granularity": "group", "group_size": 16})],
    [Rule("quant", {"bits": "ternary"})],
    [Rule("quant", {"bits": "fp16"}), Rule("act_quant", {"bits": "fp16"})],
    [Rule("act_quant", {"bits": 8})],
    [Rule("teal", {"sparsity": 0.5})],
    [Rule("quant", {"bits": 4}), Rule("teal", {"sparsity": 0.25})],
]


@pytest.mark.parametrize("rules", PLANS, ids=lambda r: "+".join(f"{x.lever}{x.params}" for x in r))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_apply_changes_the_model_and_restore_is_bit_exact(arch, rules):
    lm = tiny_model(arch)
    before, out = snapshot(lm), logits(lm)
    with apply(lm, Plan(rules), calibrate(lm, TEXT)):
        assert not torch.equal(logits(lm), out)
    after = snapshot(lm)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(logits(lm), out)


def test_magnitude_prune_zeroes_exactly_the_smallest_weights(lm):
    original = weights(lm)
    with apply(lm, Plan([Rule("prune", {"method": "magnitude", "sparsity": 0.3})])):
        for key, w in weights(lm).items():
            a = original[key].numpy()
            keep = math.ceil(0.7 * a.size)
            threshold = np.sort(np.abs(a).ravel())[::-1][keep - 1]  # random floats: no ties
            expect = np.where(np.abs(a) >= threshold, a, 0.0)
            assert np.array_equal(w.numpy(), expect)
            assert (w == 0).sum().item() == a.size - keep


def test_wanda_prunes_the_lowest_weight_times_input_norm_per_row(lm, calib):
    original = weights(lm)
    with apply(lm, Plan([Rule("prune", {"method": "wanda", "sparsity": 0.5}, sites=["mlp.W_out"])]), calib):
        for layer in range(lm.n_layers):
            a = original[(layer, "mlp.W_out")].numpy()
            score = np.abs(a) * calib[f"blocks.{layer}.mlp.W_out"]["act_norm"].numpy()
            dropped = np.argsort(score, axis=1)[:, : a.shape[1] // 2]
            expect = a.copy()
            np.put_along_axis(expect, dropped, 0.0, axis=1)
            assert np.array_equal(weights(lm)[(layer, "mlp.W_out")].numpy(), expect)
        assert torch.equal(weights(lm)[(0, "attn.W_Q")], original[(0, "attn.W_Q")])  # other sites untouched


def test_two_four_keeps_the_two_largest_of_every_four_inputs(lm):
    original = weights(lm)
    with apply(lm, Plan([Rule("prune", {"method": "magnitude", "nm": "2:4"})])):
        for key, w in weights(lm).items():
            a, got = original[key].numpy().reshape(-1, 4), w.numpy().reshape(-1, 4)
            top2 = np.sort(np.argsort(-np.abs(a), axis=1)[:, :2], axis=1)
            assert ((got != 0).sum(1) == 2).all()
            assert np.array_equal(np.take_along_axis(got, top2, 1), np.take_along_axis(a, top2, 1))


def test_random_prune_removes_the_share_asked_with_a_pattern_per_linear(lm):
    with apply(lm, Plan([Rule("prune", {"method": "random", "sparsity": 0.4, "seed": 1})])) as applied:
        masks = [lv.mask for levers in applied.levers.values() for lv in levers]
    for m in masks:
        assert (~m).sum().item() == m.numel() - math.ceil(0.6 * m.numel())
    assert not torch.equal(masks[0], masks[1])  # W_Q and W_K share a shape but not a pattern
    with apply(lm, Plan([Rule("prune", {"method": "random", "sparsity": 0.4, "seed": 1})])) as again:
        assert torch.equal(next(iter(again.levers.values()))[0].mask, masks[0])


def test_global_magnitude_plan_matches_one_threshold_over_all_weights(lm):
    original = weights(lm)
    plan = global_magnitude_plan(lm, 0.6)
    flat = np.concatenate([np.abs(w.numpy()).ravel() for w in original.values()])
    keep = math.ceil(0.4 * flat.size)
    threshold = np.sort(flat)[::-1][keep - 1]
    with apply(lm, plan):
        for key, w in weights(lm).items():
            a = original[key].numpy()
            assert np.array_equal(w.numpy(), np.where(np.abs(a) >= threshold, a, 0.0))
    sparsities = {r.params["sparsity"] for r in plan.rules}
    assert len(sparsities) > 1  # layers lose different shares


def test_quant_lever_reports_bits_per_parameter_with_scales(lm):
    rules = [Rule("quant", {"bits": 8}, sites=["mlp.W_out"]),
             Rule("quant", {"bits": 4, "granularity": "group", "group_size": 16}, sites=["mlp.W_in"]),
             Rule("quant", {"bits": "ternary"}, sites=["attn.W_Q"])]
    with apply(lm, Plan(rules)) as applied:
        w_out, w_in, w_q = (applied.levers[f"blocks.0.{s}"][0] for s in ("mlp.W_out", "mlp.W_in", "attn.W_Q"))
        q = weights(lm)[(0, "attn.W_Q")]
    assert w_out.bits_per_param == pytest.approx(8 + 16 / 64)  # one fp16 scale per row of 64 inputs
    assert w_in.bits_per_param == pytest.approx(4 + 16 / 16)
    assert w_q.bits_per_param == pytest.approx(2 + 16 / q.numel())
    assert len(torch.unique(q.abs())) <= 2  # {0, alpha}


def capture_inputs(lm, layer, wsite):
    """Inputs the original linear receives (after any input levers), via a pre-hook on it."""
    seen, module = [], lm.sites.linear(layer, wsite)
    handle = getattr(module, "original", module).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    logits(lm)
    handle.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


def test_act_quant_puts_each_token_on_its_own_int8_grid(lm):
    with apply(lm, Plan([Rule("act_quant", {"bits": 8})])):
        x = capture_inputs(lm, 1, "mlp.W_out").double().numpy()
    steps = x / (np.abs(x).max(axis=1, keepdims=True) / 127)
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(steps).max() == pytest.approx(127, abs=1e-3)


def test_teal_threshold_is_the_calibration_quantile_and_density_is_counted(lm, calib):
    sample = np.sort(calib["blocks.1.mlp.W_out"]["abs_sample"].numpy())
    with apply(lm, Plan([Rule("teal", {"sparsity": 0.5}, layers=[1], sites=["mlp.W_out"])]), calib) as applied:
        lever = applied.levers["blocks.1.mlp.W_out"][0]
        x = capture_inputs(lm, 1, "mlp.W_out").numpy()
    assert lever.threshold == sample[round(0.5 * sample.size)]
    assert (np.abs(x[x != 0]) >= lever.threshold).all()
    assert lever.input_density == pytest.approx((x != 0).mean())
    assert lever.total == x.size


@pytest.mark.parametrize("rule, message", [
    (Rule("prune", {"sparsity": 1.0}), "sparsity must lie in [0, 1)"),
    (Rule("prune", {"sparsity": -0.1}), "sparsity must lie in [0, 1)"),
    (Rule("prune", {}), "needs sparsity"),
    (Rule("prune", {"method": "taylor", "sparsity": 0.5}), "unknown prune method"),
    (Rule("prune", {"nm": "4:4"}), "1 ≤ N < M"),
    (Rule("prune", {"nm": "3:2"}), "1 ≤ N < M"),
    (Rule("prune", {"nm": "two:four"}), "not an N:M pattern"),
    (Rule("prune", {"nm": "1:3"}), "not divisible by M=3"),
    (Rule("prune", {"nm": "2:4", "sparsity": 0.5}), "either sparsity or nm"),
    (Rule("prune", {"method": "wanda", "sparsity": 0.5}), "needs calibration"),
    (Rule("teal", {"sparsity": 0.5}), "needs calibration"),
    (Rule("teal", {"sparsity": 1.5}), "sparsity must lie in [0, 1)"),
    (Rule("quant", {"bits": 3}), "bits=3 is not supported"),
    (Rule("quant", {"bits": 4, "granularity": "group", "group_size": 24}), "does not divide"),
    (Rule("quant", {"bits": 8, "granularity": "per_row"}), "granularity"),
    (Rule("act_quant", {"bits": 2}), "bits=2 is not supported"),
])
def test_bad_parameters_raise_one_line_and_leave_the_model_untouched(lm, rule, message):
    before, out = snapshot(lm), logits(lm)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")) as err:
        apply(lm, Plan([rule]))
    assert "\n" not in str(err.value)
    assert getattr(lm, "_applied", None) is None
    assert all(torch.equal(v, snapshot(lm)[k]) for k, v in before.items())
    assert torch.equal(logits(lm), out)


def test_empty_calibration_text_is_refused(lm):
    with pytest.raises(UserError, match="calibration text is empty"):
        calibrate(lm, "")


@pytest.mark.parametrize("points, tolerance, expected", [
    (([0.1, 0.2, 0.3], [0.0, 0.005, 0.02]), 0.01, (0.2 + 0.1 * (0.01 - 0.005) / (0.02 - 0.005), True)),
    (([0.1, 0.2], [0.05, 0.2]), 0.01, (0.1 * 0.01 / 0.05, True)),  # crosses between (0, 0) and the first point
    (([0.3, 0.1, 0.2], [0.002, 0.0, 0.001]), 0.01, (0.3, False)),  # never crosses: a lower bound
    (([0.1, 0.2, 0.3], [0.02, 0.0, 0.0]), 0.01, (0.05, True)),  # the first crossing counts
])
def test_essential_sparsity_interpolates_the_first_crossing(points, tolerance, expected):
    knee, reached = essential_sparsity(*points, tolerance)
    assert knee == pytest.approx(expected[0]) and reached == expected[1]

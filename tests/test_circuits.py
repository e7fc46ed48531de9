"""Circuits: patching is exact where it must be, attribution tracks exact patching, discovery finds a planted head.

References are independent of the code under test: plain model forwards with hand-written hooks or edited weights.
"""

import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from tiny import tiny_model
from typer.testing import CliRunner

from sparsescope.circuits import attribution, scores
from sparsescope.circuits.mask import MaskConfig, learn_mask
from sparsescope.circuits.patch import Patcher, parse_components
from sparsescope.circuits.study import DiscoverConfig, discover, load_circuit, save_circuit
from sparsescope.circuits.tasks import Pair, TaskData, make_task
from sparsescope.errors import UserError


def char_task(lm, n=8, length=7, seed=0, split="train") -> TaskData:
    """Random letter strings; the corrupted prompt differs in its last two letters; good/bad: two fixed letters."""
    rng = random.Random(f"{seed}{split}")
    ids = lambda s: lm.tokenizer(s)["input_ids"]  # noqa: E731
    pairs = []
    for _ in range(n):
        text = "".join(rng.choice("abcdefgh") for _ in range(length))
        other = text[:-2] + "".join(rng.choice("ijklmnop") for _ in range(2))
        pairs.append(Pair(ids(text), ids(other), ids("x"), ids("y"), text))
    return TaskData("chars", split, pairs)


def manual_metric(lm, data: TaskData, hooks=()) -> torch.Tensor:
    """Per-prompt logit(good) − logit(bad) at the last token, one prompt at a time, with optional raw hooks."""
    handles = [module.register_forward_hook(fn) if kind == "post" else module.register_forward_pre_hook(fn)
               for module, kind, fn in hooks]
    try:
        out = []
        with torch.no_grad():
            for p in data.pairs:
                logits = lm.model(input_ids=torch.tensor([p.clean])).logits[0, -1]
                out.append(logits[p.good[0]] - logits[p.bad[0]])
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=1)


@pytest.fixture(scope="module")
def planted():
    """Only head 1 of layer 1 writes to the residual stream: every other o_proj column block and every MLP output
    is zeroed, so that head alone carries the metric (the embeddings' direct path is the same clean or corrupted)."""
    lm = tiny_model("llama", seed=2)
    with torch.no_grad():
        for layer, block in enumerate(lm.model.model.layers):
            block.mlp.down_proj.weight.zero_()
            w = block.self_attn.o_proj.weight  # [d_model, heads·head_dim]
            keep = w[:, 8:16].clone() * 4
            w.zero_()
            if layer == 1:
                w[:, 8:16] = keep
    return lm


def test_nothing_ablated_and_all_ones_mask_reproduce_the_model_exactly(lm):
    data = char_task(lm)
    reference = manual_metric(lm, data)
    for level in ("heads", "neurons", "layers"):
        patcher = Patcher(lm, level)
        prepared = patcher.prepare(data)
        untouched = patcher.per_prompt(prepared)
        ones = patcher.per_prompt(prepared, torch.ones(patcher.n_nodes))
        assert torch.equal(untouched, ones), level  # all-ones mask: bit-exact, not merely close
        assert torch.allclose(untouched, reference, atol=1e-5), level  # batched+padded vs one prompt at a time


def test_gqa_head_node_is_its_query_head_slice(lm):
    """4 query heads share 2 KV heads: there are 4 head nodes per layer, and zero-ablating head 3 of layer 0 equals
    zeroing that head's o_proj input columns in the weights."""
    data = char_task(lm)
    patcher = Patcher(lm, "heads", "zero")
    assert (patcher.nodes["kind"] == "head").sum() == lm.n_layers * 4
    keep = 1 - patcher.mask_from(parse_components("L0H3"))
    got = patcher.per_prompt(patcher.prepare(data), keep)
    w = lm.model.model.layers[0].self_attn.o_proj.weight
    saved = w.data.clone()
    try:
        with torch.no_grad():
            w[:, 24:32] = 0
        want = manual_metric(lm, data)
    finally:
        w.data = saved
    assert torch.allclose(got, want, atol=1e-5)


def test_layer_node_zero_ablation_skips_the_block(lm):
    data = char_task(lm)
    patcher = Patcher(lm, "layers", "zero")
    got = patcher.per_prompt(patcher.prepare(data), 1 - patcher.mask_from(parse_components("L1")))
    skip = (lm.model.model.layers[1], "post", lambda m, args, out: (args[0], *out[1:]) if isinstance(out, tuple)
            else args[0])
    assert torch.allclose(got, manual_metric(lm, data, [skip]), atol=1e-5)


def test_mean_ablation_uses_the_stated_reference_set(lm):
    data, reference, other = char_task(lm), char_task(lm, seed=5), char_task(lm, seed=9, length=4)
    j = 17
    down = lm.model.model.layers[0].mlp.down_proj
    seen = []
    h = down.register_forward_pre_hook(lambda m, args: seen.append(args[0][0, :, j]))
    with torch.no_grad():
        for p in reference.pairs:  # one prompt at a time: no padding to mask out
            lm.model(input_ids=torch.tensor([p.clean]))
    h.remove()
    mean = torch.cat(seen).mean()

    def set_mean(m, args):
        x = args[0].clone()
        x[..., j] = mean
        return (x,)
    want = manual_metric(lm, data, [(down, "pre", set_mean)])
    keep = lambda p: 1 - p.mask_from(parse_components(f"L0N{j}"))  # noqa: E731
    patcher = Patcher(lm, "neurons", "mean", reference=reference)
    got = patcher.per_prompt(patcher.prepare(data), keep(patcher))
    assert torch.allclose(got, want, atol=1e-5)
    otherwise = Patcher(lm, "neurons", "mean", reference=other)
    assert not torch.allclose(otherwise.per_prompt(otherwise.prepare(data), keep(otherwise)), want, atol=1e-5)


def test_attribution_agrees_with_exact_patching_in_sign_and_rank(lm):
    data = char_task(lm, n=6)
    patcher = Patcher(lm, "heads")
    prepared = patcher.prepare(data)
    truth = attribution.exact(patcher, prepared).numpy()
    for method in ("eap", "eap_ig"):
        est = attribution.effects(patcher, prepared, method, steps=8).numpy()
        big = np.abs(truth) > 0.1 * np.abs(truth).max()
        assert spearmanr(est, truth).statistic > 0.8, method
        assert (np.sign(est[big]) == np.sign(truth[big])).all(), method


def test_eap_equals_hand_computed_gradient_times_difference(lm):
    """EAP for head h of layer 1 = Σ (z_corrupt − z_clean)[head slice] · ∂m/∂z, with a hand-written hook."""
    data = char_task(lm, n=3)
    patcher = Patcher(lm, "heads")
    prepared = patcher.prepare(data)
    eap = attribution.attribute(patcher, prepared)
    o_proj = lm.model.model.layers[1].self_attn.o_proj
    want = torch.zeros(4)
    for p in data.pairs:
        z = {}
        h = o_proj.register_forward_pre_hook(lambda m, args: z.__setitem__("corrupt", args[0].detach()))
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([p.corrupt]))
        h.remove()

        def grab(m, args):
            args[0].retain_grad()
            z["clean"] = args[0]
        h = o_proj.register_forward_pre_hook(grab)
        logits = lm.model(input_ids=torch.tensor([p.clean])).logits[0, -1]
        h.remove()
        (logits[p.good[0]] - logits[p.bad[0]]).backward()
        contrib = ((z["corrupt"] - z["clean"].detach()) * z["clean"].grad)[0].sum(0).reshape(4, 8).sum(1)
        want += contrib / len(data.pairs)
        lm.model.zero_grad()
    got = eap[patcher.nodes.index[(patcher.nodes["layer"] == 1) & (patcher.nodes["kind"] == "head")]]
    assert torch.allclose(got, want, atol=1e-5)


def test_discovery_finds_exactly_the_planted_head(planted):
    data, held = char_task(planted, n=6), char_task(planted, n=6, split="test")
    patcher = Patcher(planted, "heads")
    prepared, p_held = patcher.prepare(data), patcher.prepare(held)
    planted_row = ((patcher.nodes["layer"] == 1) & (patcher.nodes["kind"] == "head") & (patcher.nodes["index"] == 1))
    target = int(np.flatnonzero(planted_row)[0])
    e = scores.ends(patcher, prepared)
    rankings = {m: attribution.effects(patcher, prepared, m, steps=3) for m in ("exact", "eap", "eap_ig")}
    rankings["mask"] = learn_mask(patcher, prepared, e, MaskConfig(steps=15, lr=0.2))
    e_held = scores.ends(patcher, p_held)
    for method, ranking in rankings.items():
        keep = scores.top_k(ranking, 1)
        assert torch.nonzero(keep).flatten().tolist() == [target], method
        assert e_held.f(patcher.metric(p_held, keep)) == pytest.approx(1.0, abs=1e-5), method
    others = rankings["exact"].clone()
    others[target] = 0
    assert others.abs().max() < 1e-5  # nothing else matters


def test_faithfulness_is_one_for_the_full_model_and_zero_for_the_empty_circuit(lm):
    data = char_task(lm)
    patcher = Patcher(lm, "heads")
    prepared = patcher.prepare(data)
    e = scores.ends(patcher, prepared)
    ranking = torch.randn(patcher.n_nodes, generator=torch.Generator().manual_seed(0))
    curve = scores.faithfulness_curve(patcher, prepared, ranking, e, sizes=(10, 50, 100))
    assert curve["faithfulness"].iloc[-1] == 1.0
    assert e.f(patcher.metric(prepared, scores.top_k(ranking, 0))) == 0.0
    cpr, cmd = scores.cpr_cmd(pd.DataFrame(dict(size_frac=[0, 1], faithfulness=[0.0, 1.0])))
    assert (cpr, cmd) == (0.5, 0.5)  # the area of a straight line from ∅ to N


def test_tasks_are_seeded_disjoint_and_position_aligned(lm):
    a, b = make_task("induction", lm.tokenizer, 10, "train", 3), make_task("induction", lm.tokenizer, 10, "test", 3)
    assert [p.text for p in a.pairs] == [p.text for p in make_task("induction", lm.tokenizer, 10, "train", 3).pairs]
    assert not {p.text for p in a.pairs} & {p.text for p in b.pairs}
    assert all(len(p.clean) == len(p.corrupt) for p in a.pairs + b.pairs)
    gt = make_task("greater_than", lm.tokenizer, 5).pairs[0]
    tens = int(gt.text.split("year ")[1][2])  # "...from the year 1732 to..." → 3
    digit = lambda d: lm.tokenizer(str(d))["input_ids"][0]  # noqa: E731
    assert gt.good == [digit(d) for d in range(tens + 1, 10)] and gt.bad == [digit(d) for d in range(tens)]


def test_bad_input_is_one_line_user_error(lm, tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        make_task("nope", lm.tokenizer)
    with pytest.raises(UserError, match="bad component"):
        parse_components("head3")
    with pytest.raises(UserError, match="not a heads-level node"):
        Patcher(lm, "heads").mask_from(parse_components("L7H1"))
    with pytest.raises(UserError, match="at chance"):  # a random model does not do induction
        discover(lm, "induction", DiscoverConfig(methods=("eap",), n=8))
    path = tmp_path / "c.json"
    save_circuit(path, tiny_model("qwen2"), parse_components("L0H1"), "heads")
    other = tiny_model("gpt2")
    with pytest.raises(UserError, match="rediscover"):
        load_circuit(path, other)
    nodes, level = load_circuit(path, tiny_model("llama"))  # same widths: accepted
    assert level == "heads" and nodes.to_dict("records") == [dict(layer=0, kind="head", index=1)]


def test_cli_refuses_a_task_at_chance_in_one_line(model_dir, tmp_path):
    from sparsescope.cli import app

    res = CliRunner().invoke(app, ["circuits", "discover", "--model", str(model_dir), "--tasks", "induction",
                                   "--n", "6", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "at chance" in res.output and "accuracy" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["circuits", "ablate", "--model", str(model_dir), "--task", "nope",
                                   "--components", "L0H1"])
    assert res.exit_code == 2 and "unknown task" in res.output


@pytest.mark.slow
def test_smollm2_does_ioi_above_chance():
    from sparsescope.circuits.study import measure
    from sparsescope.models import load_model

    lm = load_model("smollm2-135m")
    perf = measure(lm, "ioi", n=8)
    assert perf.accuracy > 0.75 and not perf.at_chance


def test_discover_writes_the_contract_tables(lm, monkeypatch):
    """The whole discovery path on a tiny model (its at-chance refusal switched off): every contract column, f = 1
    at 100 % for every method, a random baseline, the chosen circuit as large as the scores say."""
    from sparsescope.circuits import tasks

    monkeypatch.setattr(tasks.Performance, "check", lambda self: None)
    cfg = DiscoverConfig(methods=("eap", "eap_ig", "mask"), n=4, random_seeds=2, steps=2, validate=4,
                         mask=MaskConfig(steps=2), sizes=(10, 50, 100))
    t = discover(lm, "induction", cfg)
    contract = {"tasks": ["task", "n_prompts", "accuracy", "chance", "logit_diff", "at_chance"],
                "effects": ["task", "method", "layer", "kind", "index", "effect"],
                "faithfulness": ["task", "method", "size_frac", "faithfulness", "n_components"],
                "scores": ["task", "method", "cpr", "cmd", "necessity", "sufficiency", "random_cpr", "random_cmd"],
                "circuit": ["task", "method", "layer", "kind", "index", "score"]}
    for name, cols in contract.items():
        assert set(cols) <= set(t[name].columns), name
    full = t["faithfulness"][t["faithfulness"]["size_frac"] == 1.0]
    assert (full["faithfulness"] == 1.0).all() and set(full["method"]) == {"eap", "eap_ig", "mask", "random"}
    sizes = t["circuit"].groupby("method").size()
    assert (sizes == t["scores"].set_index("method")["n_components"]).all()
    assert set(t["validation"]["method"]) == {"eap", "eap_ig"}


def test_overlap_is_jaccard_per_layer_and_overall():
    from sparsescope.circuits.study import overlap

    rows = [("a", 0, "head", 1), ("a", 0, "head", 2), ("a", 1, "mlp", 0), ("b", 0, "head", 2), ("b", 1, "head", 0)]
    circuit = pd.DataFrame(rows, columns=["task", "layer", "kind", "index"]).assign(method="eap_ig", variant="dense")
    got = overlap(circuit).set_index("layer")["jaccard"].to_dict()
    assert got == {-1: 1 / 4, 0: 1 / 2, 1: 0.0}  # {a} ∩ {b} = {L0H2}; union: L0H1, L0H2, L1.mlp, L1H0


def test_smallest_circuit_at_target_is_found_at_any_size():
    """A fake patcher whose metric is the kept share: f(k) = k / n, so the fewest nodes reaching 0.8 is ⌈0.8 n⌉."""
    class Linear:
        n_nodes = 137

        def metric(self, prepared, keep):
            return float(keep.sum()) / self.n_nodes
    curve = scores.Curve(Linear(), None, torch.arange(137.0), scores.Ends(1.0, 0.0))
    assert curve.smallest() == 137  # MIB sizes: 50 % (69 nodes) fails, so 100 %
    assert curve.smallest_k() == 110 == int(np.ceil(0.8 * 137))
    assert len(curve.metric) < 20  # bisection, not a scan


def test_two_stage_rescores_the_top_of_eap_ig_with_exact_effects(lm):
    data = char_task(lm, n=6)
    patcher = Patcher(lm, "heads")
    prepared = patcher.prepare(data)
    ig = attribution.effects(patcher, prepared, "eap_ig", steps=4)
    truth = attribution.exact(patcher, prepared)
    two = attribution.effects(patcher, prepared, "eap_ig_exact", steps=4, refine=3)
    top = np.argsort(-ig.abs().numpy(), kind="stable")[:3]
    rest = np.setdiff1d(np.arange(patcher.n_nodes), top)
    assert torch.allclose(two[top], truth[top]) and torch.equal(two[rest], ig[rest])

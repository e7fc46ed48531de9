"""Edges: one patched edge equals a hand-written forward, the ends are the clean and corrupted models, attribution
tracks exact edge patching, discovery over edges finds the planted path.

The references use raw PyTorch hooks on the Llama modules (embed_tokens, o_proj, q/k/v_proj, the norms), never the
edge patcher's own machinery.
"""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from test_circuits import char_task, manual_metric
from tiny import tiny_model

from sparsescope.circuits import attribution, scores
from sparsescope.circuits.edges import EdgePatcher
from sparsescope.circuits.study import DiscoverConfig, discover, load_circuit, save_circuit, score_circuit
from sparsescope.errors import UserError

DH = 8  # tiny llama: 32 wide, 4 query heads, 2 KV heads → head_dim 8


@pytest.fixture(scope="module")
def lm():
    """Float64, so that single-edge effects (small in a random tiny model) sit far above rounding error."""
    return tiny_model("llama", seed=1, dtype=torch.float64)


def writer(lm, ids, up):
    """A writer's output ``[T, d]`` on a plain forward of ``ids``: embeddings, one head through its o_proj columns,
    or one MLP."""
    layers, got = lm.model.model.layers, {}
    keep = lambda x: got.__setitem__("x", x[0])  # noqa: E731  (returns None: the hooks only observe)
    if up[0] == "embed":
        h = lm.model.model.embed_tokens.register_forward_hook(lambda m, a, o: keep(o))
    elif up[0] == "head":
        s = slice(up[2] * DH, (up[2] + 1) * DH)
        h = layers[up[1]].self_attn.o_proj.register_forward_pre_hook(lambda m, a: keep(a[0][..., s] @ m.weight[:, s].T))
    else:
        h = layers[up[1]].mlp.register_forward_hook(lambda m, a, o: keep(o))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([ids]))
    h.remove()
    return got["x"]


def manual_edge(lm, data, up, down):
    """Per-prompt metric with only edge up → down fed the writer's corrupted output instead of its clean one."""
    layers, out = lm.model.model.layers, []
    for p in data.pairs:
        delta = writer(lm, p.corrupt, up) - writer(lm, p.clean, up)
        hooks, resid = [], {}
        if down[0] in ("q", "k", "v"):
            block = layers[down[1]]
            hooks.append(block.register_forward_pre_hook(lambda m, a: resid.__setitem__("x", a[0])))
            proj = getattr(block.self_attn, f"{down[0]}_proj")
            s = slice(down[2] * DH, (down[2] + 1) * DH)

            def fix(m, a, o, block=block, s=s):
                o = o.clone()
                o[..., s] = F.linear(block.input_layernorm(resid["x"] + delta), m.weight[s])
                return o
            hooks.append(proj.register_forward_hook(fix))
        elif down[0] == "mlp":
            hooks.append(layers[down[1]].post_attention_layernorm.register_forward_pre_hook(
                lambda m, a: (a[0] + delta,)))
        else:
            hooks.append(lm.model.model.norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([p.clean])).logits[0, -1]
        for h in hooks:
            h.remove()
        out.append(logits[p.good[0]] - logits[p.bad[0]])
    return torch.stack(out)


def corrupted_metric(lm, data):
    with torch.no_grad():
        return torch.stack([(lambda lg: lg[p.good[0]] - lg[p.bad[0]])(
            lm.model(input_ids=torch.tensor([p.corrupt])).logits[0, -1]) for p in data.pairs])


@pytest.mark.parametrize("up, down, names", [
    (("head", 0, 1), ("q", 1, 2), ("L0H1", "L1H2.q")),
    (("embed",), ("k", 1, 1), ("embed", "L1KV1.k")),  # a grouped K input: read by query heads 2 and 3
    (("mlp", 0), ("v", 1, 0), ("L0.mlp", "L1KV0.v")),
    (("head", 1, 3), ("mlp", 1), ("L1H3", "L1.mlp")),  # a head into its own layer's MLP
    (("mlp", 1), ("logits",), ("L1.mlp", "logits")),
])
def test_one_corrupted_edge_equals_a_hand_written_forward(lm, up, down, names):
    data = char_task(lm)
    patcher = EdgePatcher(lm)
    keep = 1 - patcher.mask_from(pd.DataFrame([dict(up=names[0], down=names[1])]))
    got = patcher.per_prompt(patcher.prepare(data), keep)
    want = manual_edge(lm, data, up, down)
    clean = manual_metric(lm, data)
    assert torch.allclose(got - clean, want - clean, rtol=1e-6, atol=1e-12)
    assert (got - clean).abs().max() > 1e-6  # the edge does change something (float64: far above rounding)


def test_all_edges_is_the_model_and_no_edges_is_the_corrupted_run(lm):
    data = char_task(lm)
    patcher = EdgePatcher(lm)
    prepared = patcher.prepare(data)
    assert torch.allclose(patcher.per_prompt(prepared, torch.ones(patcher.n_nodes)), manual_metric(lm, data),
                          atol=1e-5)
    assert torch.allclose(patcher.per_prompt(prepared, torch.zeros(patcher.n_nodes)), corrupted_metric(lm, data),
                          atol=1e-5)
    e = scores.ends(patcher, prepared)
    ranking = torch.randn(patcher.n_nodes, generator=torch.Generator().manual_seed(0))
    curve = scores.faithfulness_curve(patcher, prepared, ranking, e, sizes=(10, 100))
    assert curve["faithfulness"].iloc[-1] == 1.0
    assert e.f(patcher.metric(prepared, scores.top_k(ranking, 0))) == 0.0


def test_edges_are_every_writer_before_every_reader(lm):
    patcher = EdgePatcher(lm)
    # 2 layers, 4 heads, 2 KV heads: writers embed + 2·(4 + 1); readers per layer 4 q + 2 k + 2 v + 1 MLP, + logits
    assert (len(patcher.up), len(patcher.down)) == (11, 19)
    brute = sum(1 for u in patcher.up.itertuples() for d in patcher.down.itertuples()
                if u.kind == "embed" or u.layer < d.layer or (u.layer == d.layer and u.kind == "head"
                                                              and d.kind == "mlp_in"))
    assert patcher.n_nodes == brute == 82


def test_edge_attribution_agrees_with_exact_edge_patching(lm):
    data = char_task(lm)
    patcher = EdgePatcher(lm)
    prepared = patcher.prepare(data)
    truth = attribution.exact(patcher, prepared)
    for steps in (1, 8):
        est = attribution.attribute(patcher, prepared, steps)
        assert spearmanr(est, truth).statistic > 0.8
        big = truth.abs() > truth.abs().median()
        assert (torch.sign(est[big]) == torch.sign(truth[big])).float().mean() > 0.9


def test_eap_edge_score_is_the_difference_times_the_readers_gradient(lm):
    """EAP of edge L0H1 → L1H2.q by hand: perturb the reader's input along the writer's δ by finite differences."""
    data = char_task(lm, n=1)
    patcher = EdgePatcher(lm)
    prepared = patcher.prepare(data)
    i = int(np.flatnonzero((patcher.nodes["up"] == "L0H1") & (patcher.nodes["down"] == "L1H2.q"))[0])
    est = float(attribution.attribute(patcher, prepared, 1)[i])
    p = data.pairs[0]
    delta = writer(lm, p.corrupt, ("head", 0, 1)) - writer(lm, p.clean, ("head", 0, 1))

    def metric(eps):
        block, resid = lm.model.model.layers[1], {}
        h1 = block.register_forward_pre_hook(lambda m, a: resid.__setitem__("x", a[0]))

        def fix(m, a, o):
            o = o.clone()
            o[..., 2 * DH: 3 * DH] = F.linear(block.input_layernorm(resid["x"] + eps * delta), m.weight[2 * DH: 3 * DH])
            return o
        h2 = block.self_attn.q_proj.register_forward_hook(fix)
        with torch.no_grad():
            lg = lm.model(input_ids=torch.tensor([p.clean])).logits[0, -1]
        h1.remove()
        h2.remove()
        return float(lg[p.good[0]] - lg[p.bad[0]])
    eps = 1e-3
    assert est == pytest.approx((metric(eps) - metric(-eps)) / (2 * eps), rel=1e-2, abs=1e-5)


def test_discovery_over_edges_finds_the_planted_path(tmp_path, monkeypatch):
    """Only head 1 of layer 1 writes (every other o_proj block and MLP output zeroed): edges from silent writers
    score exactly zero, and the chosen circuit is made of the embeddings' and the planted head's edges."""
    from sparsescope.circuits import study
    from sparsescope.circuits.tasks import Performance

    lm = tiny_model("llama", seed=2)
    with torch.no_grad():
        for layer, block in enumerate(lm.model.model.layers):
            block.mlp.down_proj.weight.zero_()
            w = block.self_attn.o_proj.weight
            keep = w[:, DH: 2 * DH].clone() * 4
            w.zero_()
            if layer == 1:
                w[:, DH: 2 * DH] = keep
    monkeypatch.setattr(study, "split_data", lambda lm, task, cfg: (char_task(lm, cfg.n, split="train"),
                                                                    char_task(lm, cfg.n, split="test")))
    cfg = DiscoverConfig(methods=("eap", "eap_ig"), level="edges", n=8, random_seeds=1, steps=3, sizes=(5, 20, 100),
                         validate=10)
    tables = discover(lm, "chars", cfg, perf=Performance("chars", 16, 1.0, 0.5, 0.0, 1.0, 0.0, False))
    edges = tables["edges"]
    assert set(tables) >= {"edges", "faithfulness", "scores", "validation", "tasks"} and "circuit" not in tables
    assert {"task", "method", "up", "down", "score", "in_circuit"} <= set(edges.columns)
    silent = ~edges["up"].isin(["embed", "L1H1"])
    assert (edges.loc[silent, "score"] == 0).all()
    chosen = edges[edges["in_circuit"]]
    assert len(chosen) and chosen["up"].isin(["embed", "L1H1"]).all()
    assert ("L1H1", "logits") in set(zip(chosen["up"], chosen["down"]))
    path = tmp_path / "c.json"
    eap = chosen[chosen["method"] == "eap"]
    save_circuit(path, lm, eap, "edges")
    nodes, level = load_circuit(path, lm)
    assert level == "edges" and len(nodes) == len(eap)
    row = score_circuit(lm, "chars", nodes, level, cfg)
    held = tables["scores"].set_index("method").loc["eap", "sufficiency"]
    assert row["faithfulness"] == pytest.approx(held, abs=1e-6)


def test_edge_patching_refuses_fused_qkv_models():
    with pytest.raises(UserError, match="separate q/k/v"):
        EdgePatcher(tiny_model("gpt2"))


def test_circuit_graph_draws_every_circuit_edge_once():
    from sparsescope.show.circuits import circuit_graph

    edges = pd.DataFrame(dict(up=["embed", "L0H1", "L0.mlp", "L0H0", "L1H2"],
                              down=["L0KV1.k", "L1H2.q", "logits", "L0.mlp", "logits"],
                              up_layer=[-1, 0, 0, 0, 1], down_layer=[0, 1, 2, 0, 2],
                              score=[-0.5, 0.2, -0.05, 0.0, -1.0], in_circuit=[True, True, True, False, True],
                              task="t", method="eap_ig", variant="dense"))
    fig = circuit_graph(edges, "t", "eap_ig")
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(list(t.x).count(None) for t in lines) == 4  # one None-terminated segment per circuit edge
    nodes = next(t for t in fig.data if t.mode == "markers+text")
    assert set(nodes.text) == {"embed", "L0KV1", "L0H1", "L1H2", "L0.mlp", "logits"}
    top = [t for t in circuit_graph(edges, "t", "eap_ig", top=2).data if t.mode == "lines"]
    assert sum(list(t.x).count(None) for t in top) == 2 and {t.line.color for t in top} == {"royalblue"}


def test_a_learned_edge_mask_gets_gradients_through_live_outputs(lm):
    """With keep requiring gradients the δ rows are concatenated, not written in place: same metric, and the
    gradient of an edge's keep matches a finite difference."""
    data = char_task(lm, n=2)
    patcher = EdgePatcher(lm)
    prepared = patcher.prepare(data)
    keep = torch.full((patcher.n_nodes,), 0.7, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        m = sum(patcher.forward(b, keep, refs).sum() for b, refs in prepared)
        (grad,) = torch.autograd.grad(m, keep)
    assert float(m.detach()) == pytest.approx(patcher.metric(prepared, keep.detach()) * 2, rel=1e-10)
    i, eps = 40, 1e-2  # not smaller: RMSNorm computes in float32 even in a float64 model
    up, down = keep.detach().clone(), keep.detach().clone()
    up[i] += eps
    down[i] -= eps
    assert float(grad[i]) == pytest.approx((patcher.metric(prepared, up) - patcher.metric(prepared, down)) * 2
                                           / (2 * eps), rel=1e-3)


def test_edge_sum_over_the_smaller_side_equals_the_dense_product():
    from sparsescope.circuits.edges import edge_sum

    g = torch.Generator().manual_seed(0)
    d = torch.randn(40, 50, generator=g, dtype=torch.float64)
    few = (torch.rand(40, 6, generator=g) < 0.05).double()  # few edges removed
    most = 1 - (torch.rand(40, 6, generator=g) < 0.05).double()  # most removed (a small circuit)
    partial = torch.rand(40, 6, generator=g, dtype=torch.float64)  # fractional coefficients
    for c in (few, most, partial, torch.zeros(40, 6, dtype=torch.float64), torch.ones(40, 6, dtype=torch.float64)):
        want = np.einsum("ur,un->rn", c.numpy(), d.numpy())
        assert np.allclose(edge_sum(c, d).numpy(), want)
        assert np.allclose(edge_sum(c, d, d.sum(0)).numpy(), want)
    assert torch.equal(edge_sum(torch.zeros(40, 6), d.float()), torch.zeros(6, 50))  # nothing removed: exact zeros
    grad = partial.clone().requires_grad_(True)
    edge_sum(grad, d).sum().backward()
    assert torch.allclose(grad.grad, d.sum(1, keepdim=True).expand(40, 6))

"""Co-activation clusters: recorded activations match a hand hook, planted co-activating groups are recovered and
scored against a permutation null, the tables add up."""

import numpy as np
import pandas as pd
import pytest
import torch
from test_circuits import char_task
from tiny import tiny_model

from sparsescope.circuits.clusters import agreement, cluster_neurons, coactivation, neuron_activations
from sparsescope.errors import UserError


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=1)


def test_activations_are_the_down_proj_inputs_of_real_tokens(lm):
    data = [char_task(lm, n=3), char_task(lm, n=2, length=5, seed=4)]  # two lengths: padding in the batch
    neurons = [(1, 5), (0, 17), (1, 0)]
    got = neuron_activations(lm, data, neurons)
    want = []
    for task in data:
        for p in task.pairs:  # one prompt at a time: no padding
            seen = {}
            hs = [lm.model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
                lambda m, a, layer=layer: seen.__setitem__(layer, a[0][0])) for layer in (0, 1)]
            with torch.no_grad():
                lm.model(input_ids=torch.tensor([p.clean]))
            for h in hs:
                h.remove()
            want.append(torch.stack([seen[layer][:, i] for layer, i in neurons], dim=1).double().numpy())
    assert np.allclose(got, np.concatenate(want), atol=1e-6)


def test_planted_coactivating_groups_are_recovered_above_the_null():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(400, 3))
    groups = np.repeat([0, 1, 2], 6)
    acts = latent[:, groups] * rng.choice([-1, 1], size=18) + 0.3 * rng.normal(size=(400, 18))  # sign: |corr|
    found = cluster_neurons(acts, 3)
    score = agreement(found, groups.astype(str), permutations=100)
    assert score["ari"] == 1.0 and score["p_value"] < 0.02 and score["ari_null_q95"] < 0.3
    unrelated = agreement(found, rng.permutation(groups).astype(str), permutations=100)
    assert unrelated["ari"] < score["ari_null_q95"] + 0.2


def test_coactivation_tables_add_up(lm):
    circuit = pd.DataFrame(dict(task=["a", "a", "b", "b"], layer=[0, 0, 1, 0], kind="neuron", index=[3, 9, 4, 3],
                                score=[1.0, 0.5, 2.0, 0.1],
                                method="eap_ig", variant="dense"))
    clusters, scores = coactivation(lm, circuit, [char_task(lm, n=6)], n_clusters=3, permutations=20)
    assert scores.iloc[0][["n_neurons", "n_circuit", "n_clusters"]].tolist() == [6, 3, 3]  # L0N3 is shared
    assert set(clusters["label"]) == {"a", "b", "shared", "none"}
    assert np.allclose(clusters.groupby("cluster")["share"].sum(), 1.0)
    assert clusters.groupby("cluster")["n"].sum().sum() == 6
    with pytest.raises(UserError, match="neuron-level"):
        coactivation(lm, circuit.assign(kind="head"), [char_task(lm, n=2)])


def test_compare_pruned_discovers_on_the_pruned_model_and_restores_it(lm, monkeypatch):
    from sparsescope.circuits import study
    from sparsescope.circuits.tasks import Performance

    seeds = {"a": 1, "b": 2}
    monkeypatch.setattr(study, "split_data", lambda lm, task, cfg: tuple(
        char_task(lm, cfg.n, seed=seeds[task], split=s) for s in ("train", "test")))
    monkeypatch.setattr(study, "check_task", lambda task: None)
    monkeypatch.setattr(study, "measure", lambda lm, task, *a: Performance(task, 8, 1.0, 0.5, 0.0, 1.0, 0.0, False))
    before = [p.detach().clone() for p in lm.model.parameters()]
    cfg = study.DiscoverConfig(methods=("eap",), n=6, random_seeds=1, sizes=(20, 50, 100))
    t = study.compare_pruned(lm, ["a", "b"], cfg, {"magnitude": 0.5}, neurons=True, n_clusters=3)
    assert all(torch.equal(a, b) for a, b in zip(before, lm.model.parameters()))  # restored bit for bit
    s = t["scores"][t["scores"]["level"] == "heads"].set_index(["task", "variant"])
    assert set(s.index) == {(task, v) for task in "ab" for v in ("dense", "magnitude@0.500")}
    assert (s.xs("dense", level="variant")["m_full"] != s.xs("magnitude@0.500", level="variant")["m_full"]).all()
    p = t["pruned"].set_index("task")
    assert np.allclose(p["size_ratio"], s.xs("magnitude@0.500", level="variant")["n_at_target"]
                       / s.xs("dense", level="variant")["n_at_target"])
    assert {"clusters", "cluster_scores", "firing", "overlap"} <= set(t)


def test_coactivation_keeps_the_strongest_circuit_neurons_when_capped(lm):
    circuit = pd.DataFrame(dict(task="a", layer=[0, 0, 1, 1], kind="neuron", index=[3, 9, 4, 5],
                                score=[1.0, -5.0, 0.1, 2.0], method="eap_ig", variant="dense"))
    _, scores = coactivation(lm, circuit, [char_task(lm, n=4)], n_clusters=2, permutations=5, max_neurons=4)
    assert scores.iloc[0][["n_circuit", "n_neurons"]].tolist() == [2, 4]  # L0N9 and L1N5, plus two random

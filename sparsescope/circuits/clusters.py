"""Co-activation clusters of MLP neurons, compared with the tasks' circuits: is a circuit a module of the network?

If circuits are modules, neurons of one task's circuit should fire together over the task prompts and land in one
co-activation cluster. The neurons clustered are every neuron of any task's neuron-level circuit plus as many random
other neurons (so "not in a circuit" is a real class, not an empty one); their activations (``mlp.hook_post``) over
every real token of every task's clean prompts give a correlation matrix, clustered by average-linkage agglomerative
clustering on ``1 − |corr|`` (scikit-learn). Agreement of clusters with circuit membership is the adjusted Rand index
(ARI; 0 = chance, 1 = identical), against a permutation null (membership labels shuffled over the same neurons).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sparsescope.circuits.patch import final_logits, shape_of
from sparsescope.circuits.tasks import TaskData
from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel


@torch.no_grad()
def neuron_activations(lm: LoadedModel, data: list[TaskData], neurons: list[tuple[int, int]],
                       batch_size: int = 32) -> np.ndarray:
    """Activations ``[tokens, neurons]`` of the given ``(layer, index)`` MLP neurons over every real token of the
    clean prompts of ``data``."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(index)
    cols = {(layer, i): k for k, (layer, i) in enumerate((layer, i) for layer in by_layer for i in by_layer[layer])}
    rows: list[np.ndarray] = []
    for task in data:
        for b in task.batches(batch_size):
            got: dict[int, torch.Tensor] = {}
            handles = [lm.sites.attach(layer, "mlp.hook_post", lambda x, layer=layer: got.__setitem__(
                layer, x[..., by_layer[layer]].detach())) for layer in by_layer]
            try:
                final_logits(lm, b.clean, b.mask)
            finally:
                for h in handles:
                    h.remove()
            valid = b.mask.bool()
            rows.append(torch.cat([got[layer][valid] for layer in by_layer], dim=1).double().numpy())
    grouped = np.concatenate(rows)
    return grouped[:, [cols[n] for n in neurons]]


def cluster_neurons(acts: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels of the columns of ``acts`` by average-linkage agglomerative clustering on 1 − |correlation|
    (a neuron that never varies correlates with nothing)."""
    from sklearn.cluster import AgglomerativeClustering

    if not 2 <= n_clusters <= acts.shape[1]:
        raise UserError(f"cannot make {n_clusters} clusters of {acts.shape[1]} neurons; pass 2 ≤ clusters ≤ neurons")
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(acts, rowvar=False), nan=0.0)
    np.fill_diagonal(corr, 1.0)
    model = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average")
    return model.fit_predict(1 - np.abs(corr))


def agreement(clusters: np.ndarray, labels: np.ndarray, permutations: int = 200, seed: int = 0) -> dict:
    """ARI of clusters with labels, the permutation null (mean, 95th percentile) and its one-sided p-value."""
    from sklearn.metrics import adjusted_rand_score

    ari = adjusted_rand_score(labels, clusters)
    rng = np.random.default_rng(seed)
    null = np.array([adjusted_rand_score(rng.permutation(labels), clusters) for _ in range(permutations)])
    return dict(ari=float(ari), ari_null_mean=float(null.mean()), ari_null_q95=float(np.quantile(null, 0.95)),
                p_value=float((1 + (null >= ari).sum()) / (1 + permutations)))


def coactivation(lm: LoadedModel, circuit: pd.DataFrame, data: list[TaskData], n_clusters: int = 8, seed: int = 0,
                 permutations: int = 200, max_neurons: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster circuit neurons (and as many random others) by co-activation over ``data``; per (method, variant) of
    the neuron-level ``circuit`` table: ``clusters`` (cluster × circuit label: count, share, chance share) and
    ``cluster_scores`` (ARI against the permutation null). At most ``max_neurons / 2`` circuit neurons, those with
    the largest |score| (the correlation matrix is neurons², and large circuits would not fit)."""
    neurons = circuit[circuit["kind"] == "neuron"]
    if neurons.empty:
        raise UserError("co-activation clustering compares neuron-level circuits; discover with --level neurons")
    d_mlp = shape_of(lm)["d_mlp"]
    rows, scores = [], []
    for (method, variant), c in neurons.groupby(["method", "variant"]):
        member: dict[tuple[int, int], str] = {}
        c = c.loc[c["score"].abs().sort_values(ascending=False, kind="stable").index]
        c = c[c.set_index(["layer", "index"]).index.isin(
            c[["layer", "index"]].drop_duplicates().head(max_neurons // 2).set_index(["layer", "index"]).index)]
        for r in c.itertuples():
            key = (int(r.layer), int(r.index))
            member[key] = r.task if member.get(key, r.task) == r.task else "shared"
        rest = [(layer, i) for layer in range(lm.n_layers) for i in range(d_mlp) if (layer, i) not in member]
        picked = np.random.default_rng(seed).choice(len(rest), min(len(member), len(rest)), replace=False)
        chosen = sorted(member) + sorted(rest[k] for k in picked)  # as many random non-circuit neurons (if there are)
        labels = np.array([member.get(n, "none") for n in chosen])
        found = cluster_neurons(neuron_activations(lm, data, chosen), min(n_clusters, len(chosen)))
        share = pd.Series(labels).value_counts(normalize=True)
        for k in np.unique(found):
            inside = pd.Series(labels[found == k]).value_counts()
            for label in share.index:
                n = int(inside.get(label, 0))
                rows.append(dict(method=method, variant=variant, cluster=int(k), label=label, n=n,
                                 cluster_size=int((found == k).sum()), share=n / int((found == k).sum()),
                                 chance_share=float(share[label])))
        scores.append(dict(method=method, variant=variant, n_neurons=len(chosen), n_circuit=len(member),
                           n_clusters=int(len(np.unique(found))),
                           **agreement(found, labels, permutations, seed)))
    return pd.DataFrame(rows), pd.DataFrame(scores)

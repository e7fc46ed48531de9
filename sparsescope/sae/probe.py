"""Features vs neurons: do SAE features separate ID from OOD (and the suites from each other) with fewer units than
the raw neurons of the same site?

Each prompt is described by every unit's firing frequency over its windows (SAE feature: activation > 0; neuron:
|x_i| > 0.1·RMS(x), the recorder's criterion). Two readers on both descriptions:
- the project's OOD detector (`ood.leave_family_out`: logistic regression, each OOD family held out in turn);
- a k-sparse probe (k = 1, 2, 5, 10): on each training fold pick the k units whose class means differ most
  (in training-fold standard deviations), fit a logistic regression on them, score the test fold; AUROC is
  computed on the pooled out-of-fold scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from sparsescope.ood import leave_family_out
from sparsescope.stats import auroc_ci

KS = (1, 2, 5, 10)
COLUMNS = ["units", "k", "target", "method", "family", "auroc", "auroc_lo", "auroc_hi", "accuracy", "n_units",
           "n_prompts"]


def prompt_frequencies(fires: np.ndarray, n: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit firing frequency per prompt: ``(frequencies [prompts, units], prompt ids)`` from window counts."""
    codes, index = np.unique(units, return_inverse=True)
    counts = np.zeros((len(codes), fires.shape[1]))
    np.add.at(counts, index, fires)
    tokens = np.bincount(index, weights=n)
    return counts / tokens[:, None], codes


def k_sparse_probe(X: np.ndarray, y: np.ndarray, k: int, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float]:
    """Out-of-fold scores of a k-unit logistic probe (units chosen on each training fold) and its accuracy."""
    scores = np.zeros(len(y))
    correct = 0
    n_splits = min(folds, int(np.bincount(y).min()))
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y):
        a, b = X[train][y[train] == 0], X[train][y[train] == 1]
        sd = X[train].std(0) + 1e-9
        chosen = np.argsort(-np.abs(b.mean(0) - a.mean(0)) / sd)[:k]
        mu = X[train][:, chosen].mean(0)
        model = LogisticRegression(max_iter=1000).fit((X[train][:, chosen] - mu) / sd[chosen], y[train])
        Z = (X[test][:, chosen] - mu) / sd[chosen]
        scores[test] = model.decision_function(Z)
        correct += int((model.predict(Z) == y[test]).sum())
    return scores, correct / len(y)


def probe_table(frequencies: dict[str, np.ndarray], split: np.ndarray, family: np.ndarray, ks: Sequence[int] = KS,
                n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``sae_probe`` rows for each kind of units (``{"sae": X, "neurons": X}``, rows = prompts): the k-sparse
    probe on target ``ood`` and on each family (one vs rest), and the leave-family-out OOD detector on all units."""
    rows = []
    ood = (split == "ood").astype(int)
    targets = {"ood": ood} | {f"family={f}": (family == f).astype(int) for f in sorted(set(family))}
    for units, X in frequencies.items():
        for target, y in targets.items():
            if y.sum() < 2 or (1 - y).sum() < 2:
                continue
            for k in ks:
                scores, accuracy = k_sparse_probe(X, y, min(k, X.shape[1]), seed=seed)
                auroc, lo, hi = auroc_ci(y, scores, n_boot=n_boot, seed=seed)
                rows.append((units, k, target, "k-sparse probe", "", auroc, lo, hi, accuracy, X.shape[1], len(y)))
        if len(set(family[ood == 1])) >= 2:
            frame = pd.DataFrame(X, columns=[f"u{i}" for i in range(X.shape[1])])
            res = leave_family_out(frame, ood, family, n_boot=n_boot, seed=seed)
            for r in res.itertuples():
                rows.append((units, X.shape[1], "ood", "ood detector", r.family, r.auroc, r.lo, r.hi, np.nan,
                             X.shape[1], r.n_id + r.n_ood))
    return pd.DataFrame(rows, columns=COLUMNS)


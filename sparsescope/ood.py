"""Detect OOD prompts from their per-layer sparsity profiles, next to the perplexity and max-softmax baselines.

A profile is one prompt's row of per-layer, per-site metric values. The detector is a standardised logistic
regression; `leave_family_out` asks the question that matters: does it flag OOD families it never saw in training?
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from sparsescope.errors import UserError
from sparsescope.record.metrics import Metric
from sparsescope.stats import auroc_ci, check_prompts, prompt_matrix

PROMPT_KEY = ["suite", "split", "prompt_id"]
LOGITS = "logits"  # site of the per-prompt rows layer = -1, metric nll / max_prob


def feature_name(layer: int, site: str, metric: str, threshold: float) -> str:
    """Profile column name, e.g. `L3.mlp.hook_post.near_zero_frac@0.1` (no `@` part without a threshold)."""
    return f"L{layer}.{site}.{Metric(metric, float(threshold)).label}"


def _select(rows: pd.DataFrame, column: str, wanted, default) -> pd.DataFrame:
    present = set(rows[column].unique())
    names = default if wanted is None else list(wanted)
    unknown = sorted(set(names) - present)
    if unknown:
        raise UserError(f"{column}s {unknown} are not in the prompts table; choose from {sorted(present)}")
    return rows[rows[column].isin(names)]


def profiles(prompts: pd.DataFrame, metrics=None, sites=None) -> tuple[pd.DataFrame, pd.Series]:
    """(X, y): one row per ID / OOD prompt indexed by (suite, split, prompt_id), y = 1 for OOD.

    Columns are `feature_name`s of the chosen metrics and sites (default: all, except the `logits` baseline rows).
    Features missing for some prompt are dropped with a warning, so X has no NaN.
    """
    check_prompts(prompts)
    rows = prompts[prompts["split"].isin(["id", "ood"])]
    if rows.empty:
        raise UserError("the prompts table has no 'id' or 'ood' prompts; record ID and OOD suites first")
    rows = _select(rows, "site", sites, sorted(set(rows["site"].unique()) - {LOGITS}))
    rows = _select(rows, "metric", metrics, sorted(rows["metric"].unique()))
    values, _, features, index = prompt_matrix(rows, PROMPT_KEY)
    names = [feature_name(*f) for f in features.itertuples(index=False)]
    X = pd.DataFrame(values, index=pd.MultiIndex.from_frame(index), columns=names)
    incomplete = X.columns[X.isna().any()]
    if len(incomplete):
        n = len(incomplete)
        warnings.warn(f"dropped {n} features missing for some prompts, e.g. {incomplete[0]}", stacklevel=2)
        X = X.drop(columns=incomplete)
    y = pd.Series((X.index.get_level_values("split") == "ood").astype(int), index=X.index, name="ood")
    return X, y


def baseline_scores(prompts: pd.DataFrame) -> pd.DataFrame:
    """OOD scores from the model's own predictions, higher = more OOD, indexed like `profiles`' X.

    perplexity: mean token NLL (the log of perplexity); max-softmax: minus the mean max-softmax probability.
    """
    check_prompts(prompts)
    logits = prompts[(prompts["site"] == LOGITS) & prompts["metric"].isin(["nll", "max_prob"])]
    if set(logits["metric"].unique()) != {"nll", "max_prob"}:
        raise UserError(
            "the prompts table lacks the logits rows (site 'logits', metrics nll and max_prob); re-record the run"
        )
    X, _ = profiles(logits, sites=[LOGITS])
    nll, max_prob = (X[feature_name(-1, LOGITS, m, np.nan)] for m in ("nll", "max_prob"))
    return pd.DataFrame({"perplexity": nll, "max-softmax": -max_prob})


class SparsityOODDetector(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised sparsity profiles; `decision_function` is the OOD score.

    Parameters: C (inverse L2 strength), max_iter (solver iterations).
    Attributes after fit: pipeline_ (StandardScaler → LogisticRegression), classes_, n_iter_, n_features_in_,
    feature_names_in_ (when fit on a DataFrame: later DataFrames must have exactly these columns).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.pipeline_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.pipeline_.fit(X, y)
        self.classes_ = self.pipeline_.classes_
        self.n_iter_ = self.pipeline_[-1].n_iter_
        return self

    def _validate(self, X):
        check_is_fitted(self)
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is not None and hasattr(X, "columns") and list(X.columns) != list(fitted):
            given = set(map(str, X.columns))
            missing = [c for c in fitted if c not in given]
            extra = sorted(given - set(fitted))
            problem = f"missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})"
            if not missing and not extra:
                problem = "in another order"
            raise UserError(
                f"X's features differ from those the detector was fit on: {problem}; "
                "build X with profiles() on the same metrics, sites and layers, then X[detector.feature_names_in_]"
            )
        return validate_data(self, X, reset=False)

    def decision_function(self, X) -> np.ndarray:
        X = self._validate(X)
        return self.pipeline_.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        X = self._validate(X)
        return self.pipeline_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        X = self._validate(X)
        return self.pipeline_.predict(X)

    def auroc(self, X, y) -> float:
        """Area under the ROC curve of the OOD score on (X, y), y = 1 for OOD."""
        return float(roc_auc_score(y, self.decision_function(X)))


def _score(model, X) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(X))
    return model.predict_proba(X)[:, 1]


def leave_family_out(
    X: pd.DataFrame,
    y,
    families,
    estimator=None,
    baselines: pd.DataFrame | None = None,
    id_test_size: float = 0.3,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """AUROC on each OOD family when training never saw it, for the detector and the baseline scores.

    For each OOD family f (`families`: one label per row; ignored for ID rows) a fresh clone of `estimator`
    (default `SparsityOODDetector()`) is fit on the other OOD families plus a seeded 1 − id_test_size share of
    the ID prompts, and scored on f plus the held-out ID prompts. Columns of `baselines` (e.g.
    `baseline_scores(prompts)`, higher = more OOD, same index as X) are scored on the same prompts, untrained.
    Columns: family, method ("sparsity-profile" or a baseline column), auroc, lo, hi, n_id, n_ood, fpr, tpr.
    """
    estimator = SparsityOODDetector() if estimator is None else estimator
    if len(families) != len(X) or len(y) != len(X):
        raise UserError(f"X has {len(X)} rows but y has {len(y)} and families {len(families)}; pass one label per row")
    y, families = pd.Series(np.asarray(y), index=X.index), np.asarray(families)
    if not 0 < id_test_size < 1:
        raise UserError(f"id_test_size={id_test_size} must lie in (0, 1), e.g. 0.3")
    ood = (y == 1).to_numpy()
    held_out = sorted(set(families[ood]))
    if len(held_out) < 2:
        raise UserError(f"leave-family-out needs at least 2 OOD families, got {held_out}; label rows by suite")
    if baselines is not None:
        baselines = baselines.reindex(X.index)
        if baselines.isna().any().any():
            raise UserError("baselines lack scores for some prompts of X; build both from the same prompts table")
    id_rows = np.flatnonzero(~ood)
    out = []
    for i, family in enumerate(held_out):
        rng = np.random.default_rng([seed, i])
        test = np.zeros(len(X), dtype=bool)
        test[rng.choice(id_rows, size=max(1, round(id_test_size * len(id_rows))), replace=False)] = True
        test |= ood & (families == family)
        train = ~test & ~(ood & (families == family))
        model = clone(estimator).fit(X[train], y[train])
        scores = {"sparsity-profile": _score(model, X[test])}
        if baselines is not None:
            scores |= {name: baselines[name].to_numpy()[test] for name in baselines.columns}
        y_test = y[test].to_numpy()
        for method, score in scores.items():
            auroc, lo, hi = auroc_ci(y_test, score, n_boot, ci, seed=seed + i)
            fpr, tpr, _ = roc_curve(y_test, score)
            out.append((family, method, auroc, lo, hi, int((y_test == 0).sum()), int(y_test.sum()), fpr, tpr))
    return pd.DataFrame(out, columns=["family", "method", "auroc", "lo", "hi", "n_id", "n_ood", "fpr", "tpr"])



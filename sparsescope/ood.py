"""Detect OOD prompts from their per-layer sparsity profiles, next to trivial and model-confidence baselines.

A profile is one prompt's row of per-layer, per-site metric values. The detector is a standardised logistic
regression; `leave_family_out` asks the question that matters: does it flag OOD families it never saw in training,
better than the prompt's token count, its NLL per token or per byte, the max-softmax, or a logistic regression on
all of those together, scored on the same held-out prompts?
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
from sparsescope.stats import _interval, auroc_draws, check_prompts, prompt_matrix

PROMPT_KEY = ["suite", "split", "prompt_id"]
LOGITS = "logits"  # site of the per-prompt rows layer = -1, metric nll / max_prob / nll_per_byte
PROFILE = "sparsity_profile"
COMBINED = "baselines_lr"  # logistic regression on every baseline score together


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
    """Trivial and model-confidence OOD scores per prompt, higher = more OOD, indexed like `profiles`' X.

    token_count: the whole prompt's token count (column `prompt_tokens`); nll_per_token: mean next-token NLL (log
    perplexity); nll_per_byte: summed NLL over the UTF-8 bytes it predicts; max_softmax: minus the mean max-softmax
    probability. A model without an LM head (an encoder) has no logits rows: only token_count, with a warning.
    """
    check_prompts(prompts)
    rows = prompts[prompts["split"].isin(["id", "ood"])]
    keyed = rows.drop_duplicates(PROMPT_KEY).set_index(PROMPT_KEY)
    out = pd.DataFrame(index=keyed.index)
    if "prompt_tokens" in keyed.columns:
        out["token_count"] = keyed["prompt_tokens"].astype(float)
    logits = rows[rows["site"] == LOGITS]
    if logits.empty:
        warnings.warn("no LM head (no logits rows): the NLL and max-softmax baselines are skipped", stacklevel=2)
    else:
        wide = logits.pivot_table(index=PROMPT_KEY, columns="metric", values="value").reindex(out.index)
        signs = {"nll": ("nll_per_token", 1), "nll_per_byte": ("nll_per_byte", 1), "max_prob": ("max_softmax", -1)}
        for metric, (name, sign) in signs.items():
            if metric in wide.columns:
                out[name] = sign * wide[metric]
    if out.empty or out.shape[1] == 0:
        raise UserError("the prompts table has neither prompt_tokens nor logits rows; re-record the run")
    return out


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
    groups=None,
    id_test_size: float = 0.3,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """AUROC on each OOD family when training never saw it: the detector against every baseline, same prompts.

    For each OOD family f (`families`: one label per row; ignored for ID rows) a fresh clone of `estimator`
    (default `SparsityOODDetector()`) is fit on the other OOD families plus a seeded 1 − id_test_size share of
    the ID prompts, and scored on f plus the held-out ID prompts. Each `baselines` column (e.g. `baseline_scores`)
    is scored on the same prompts, its direction set on the training prompts, and `baselines_lr` (a standardised
    logistic regression on all baseline columns) is fit on the same training prompts. CIs come from one cluster
    bootstrap of the held-out prompts (`groups`: source text per row, default each prompt alone), so the
    difference sparsity profile − best baseline (the baseline with the highest held-out AUROC) is paired.
    Columns: family, method, auroc, lo, hi, n_id, n_ood, fpr, tpr; on the sparsity_profile rows also
    best_baseline, best_baseline_auroc, profile_minus_best, profile_minus_best_lo, profile_minus_best_hi.
    """
    estimator = SparsityOODDetector() if estimator is None else estimator
    if len(families) != len(X) or len(y) != len(X):
        raise UserError(f"X has {len(X)} rows but y has {len(y)} and families {len(families)}; pass one label per row")
    y, families = pd.Series(np.asarray(y), index=X.index), np.asarray(families)
    groups = np.asarray(X.index.to_flat_index().astype(str) if groups is None else groups, dtype=str)
    if len(groups) != len(X):
        raise UserError(f"groups has {len(groups)} labels for {len(X)} rows; pass one source label per row")
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
        scores = {PROFILE: _score(model, X[test])}
        if baselines is not None:
            for name in baselines.columns:
                b = baselines[name].to_numpy()
                sign = 1.0 if roc_auc_score(y[train], b[train]) >= 0.5 else -1.0
                scores[name] = sign * b[test]
            if baselines.shape[1] > 1:
                scores[COMBINED] = _score(SparsityOODDetector().fit(baselines[train], y[train]), baselines[test])
        y_test = y[test].to_numpy()
        draws = auroc_draws(y_test, scores, groups[test], n_boot, seed=seed + i)
        gap = {}
        if len(scores) > 1:
            best = max((m for m in scores if m != PROFILE), key=lambda m: draws[m][0])
            lo, hi = _interval((draws[PROFILE][1] - draws[best][1])[:, None], ci)
            gap = dict(best_baseline=best, best_baseline_auroc=draws[best][0],
                       profile_minus_best=draws[PROFILE][0] - draws[best][0],
                       profile_minus_best_lo=float(lo[0]), profile_minus_best_hi=float(hi[0]))
        for method, score in scores.items():
            auroc, boots = draws[method]
            lo, hi = _interval(boots[:, None], ci)
            fpr, tpr, _ = roc_curve(y_test, score)
            out.append(dict(family=family, method=method, auroc=auroc, lo=float(lo[0]), hi=float(hi[0]),
                            n_id=int((y_test == 0).sum()), n_ood=int(y_test.sum()), fpr=fpr, tpr=tpr,
                            **(gap if method == PROFILE else {})))
    columns = ["family", "method", "auroc", "lo", "hi", "n_id", "n_ood", "fpr", "tpr", "best_baseline",
               "best_baseline_auroc", "profile_minus_best", "profile_minus_best_lo", "profile_minus_best_hi"]
    return pd.DataFrame(out).reindex(columns=columns)


def roc_table(results: pd.DataFrame) -> pd.DataFrame:
    """The ROC curves of `leave_family_out` results as a tidy table (the run store keeps no arrays in cells):
    one row per curve point, columns family, method, point (0, 1, ... along the curve), fpr, tpr."""
    rows = [pd.DataFrame({"family": r.family, "method": r.method, "point": np.arange(len(r.fpr)),
                          "fpr": np.asarray(r.fpr, dtype=float), "tpr": np.asarray(r.tpr, dtype=float)})
            for r in results.itertuples(index=False)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["family", "method", "point", "fpr",
                                                                                  "tpr"])


def versus_baseline(results: pd.DataFrame) -> pd.DataFrame:
    """Per held-out family: the sparsity profile's AUROC [CI], the best baseline's, and their paired difference."""
    prof = results[results["method"] == PROFILE].set_index("family")
    rows = results.set_index(["family", "method"])
    out = []
    for family, r in prof.iterrows():
        best = r["best_baseline"]
        b = rows.loc[(family, best)] if isinstance(best, str) else None
        out.append(dict(family=family, n_id=r["n_id"], n_ood=r["n_ood"], profile=r["auroc"], profile_lo=r["lo"],
                        profile_hi=r["hi"], best_baseline=best, baseline=None if b is None else b["auroc"],
                        baseline_lo=None if b is None else b["lo"], baseline_hi=None if b is None else b["hi"],
                        profile_minus_best=r["profile_minus_best"], lo=r["profile_minus_best_lo"],
                        hi=r["profile_minus_best_hi"]))
    return pd.DataFrame(out)



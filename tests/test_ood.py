"""Sparsity-profile OOD detector: profiles, scikit-learn conformance, planted signal, leave-family-out hygiene."""

import numpy as np
import pandas as pd
import pytest
from _tables import FEATURES, prompts_table
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import check_estimator

from sparsescope import ood
from sparsescope.errors import UserError
from sparsescope.show.report import roc_figure

FAMILIES = ("b64", "noise", "german")


def table(shift: float, n_id: int = 60, n_ood: int = 30, seed: int = 0) -> pd.DataFrame:
    """ID prose and three OOD families; every family moves features 5 and 7 up by `shift`. Adds logits rows with
    nll / max_prob drawn alike for ID and OOD, so the baselines carry no signal."""
    P = prompts_table(
        [("prose", "id", 0, n_id), *[(f, "ood", 0, n_ood) for f in FAMILIES]],
        lambda rng, split, level, f, i: rng.normal(shift * (split == "ood" and f in (5, 7)), 1.0),
        seed=seed,
    )
    first = P.drop_duplicates("prompt_id")
    rng = np.random.default_rng(seed + 1)
    logits = pd.concat(
        [first.assign(layer=-1, site="logits", metric=m, threshold=np.nan, value=draw(len(first))) for m, draw in
         (("nll", lambda n: rng.gamma(4.0, 0.5, n)), ("max_prob", lambda n: rng.uniform(0.2, 0.9, n)))]
    )
    P = pd.concat([P, logits], ignore_index=True)
    length = dict(zip(first.prompt_id, rng.integers(20, 80, len(first))))  # prompt token counts, no signal either
    return P.assign(prompt_tokens=P.prompt_id.map(length))


def test_profiles_name_columns_and_label_ood():
    P = table(shift=2.0)
    X, y = ood.profiles(P)
    assert list(X.columns) == [ood.feature_name(*f) for f in FEATURES]
    assert X.columns[0] == "L0.attn.hook_z.near_zero_frac@0.1" and X.columns[1] == "L0.attn.hook_z.zero_frac"
    assert X.index.names == ["suite", "split", "prompt_id"] and len(X) == 60 + 3 * 30
    assert (y == (X.index.get_level_values("split") == "ood")).all() and y.sum() == 90
    row = P[(P.prompt_id == "b64-3") & (P.layer == 2) & (P.site == "mlp.hook_post") & (P.metric == "zero_frac")]
    assert X.loc[("b64", "ood", "b64-3"), "L2.mlp.hook_post.zero_frac"] == row.value.item()
    X_mlp, _ = ood.profiles(P, metrics=["zero_frac"], sites=["mlp.hook_post"])
    assert list(X_mlp.columns) == [f"L{layer}.mlp.hook_post.zero_frac" for layer in range(3)]
    with pytest.raises(UserError, match="hook_nope"):
        ood.profiles(P, sites=["mlp.hook_nope"])


def test_profiles_drop_features_missing_for_some_prompts():
    P = table(shift=2.0)
    P = P[~((P.prompt_id == "prose-0") & (P.layer == 0) & (P.site == "attn.hook_z") & (P.metric == "zero_frac"))]
    with pytest.warns(UserWarning, match="dropped 1 features"):
        X, _ = ood.profiles(P)
    assert "L0.attn.hook_z.zero_frac" not in X.columns and not X.isna().any().any()


def test_baseline_scores_are_token_count_nll_and_minus_max_prob():
    P = table(shift=2.0)
    scores = ood.baseline_scores(P)
    rows = P[(P.prompt_id == "noise-4") & (P.site == "logits")].set_index("metric").value
    length = P.loc[P.prompt_id == "noise-4", "prompt_tokens"].iloc[0]
    assert list(scores.columns) == ["token_count", "nll_per_token", "max_softmax"]
    assert scores.loc[("noise", "ood", "noise-4")].tolist() == [length, rows["nll"], -rows["max_prob"]]
    with pytest.warns(UserWarning, match="no LM head"):  # an encoder: the trivial baseline stays, the rest is skipped
        only = ood.baseline_scores(P[P.site != "logits"])
    assert list(only.columns) == ["token_count"]
    with pytest.raises(UserError, match="neither"), pytest.warns(UserWarning):
        ood.baseline_scores(P[P.site != "logits"].drop(columns="prompt_tokens"))


def split_half(X, y, seed=0):
    test = np.random.default_rng(seed).random(len(X)) < 0.5
    return X[~test], y[~test], X[test], y[test]


def test_planted_difference_is_detected():
    X, y = ood.profiles(table(shift=2.0))
    Xtr, ytr, Xte, yte = split_half(X, y)
    detector = ood.SparsityOODDetector().fit(Xtr, ytr)
    assert detector.auroc(Xte, yte) > 0.95
    assert detector.auroc(Xte, yte) == pytest.approx(roc_auc_score(yte, detector.predict_proba(Xte)[:, 1]))
    assert list(detector.feature_names_in_) == list(X.columns) and list(detector.classes_) == [0, 1]
    assert detector.score(Xte, yte) == pytest.approx((detector.predict(Xte) == yte).mean())


def test_no_difference_gives_chance_auroc():
    X, y = ood.profiles(table(shift=0.0, n_id=600, n_ood=200))
    Xtr, ytr, Xte, yte = split_half(X, y)
    assert ood.SparsityOODDetector().fit(Xtr, ytr).auroc(Xte, yte) == pytest.approx(0.5, abs=0.1)


def test_mismatched_features_are_a_user_error_naming_them():
    X, y = ood.profiles(table(shift=2.0))
    detector = ood.SparsityOODDetector().fit(X, y)
    with pytest.raises(UserError, match=r"missing \['L1.attn.hook_z.zero_frac'\] \(1\), extra \[\] \(0\)"):
        detector.predict(X.drop(columns="L1.attn.hook_z.zero_frac"))
    with pytest.raises(UserError, match=r"extra \['L9.mlp.hook_post.hoyer'\]"):
        detector.decision_function(X.rename(columns={"L0.attn.hook_z.zero_frac": "L9.mlp.hook_post.hoyer"}))
    with pytest.raises(UserError, match="another order"):
        detector.predict_proba(X[X.columns[::-1]])
    assert (detector.predict(X[detector.feature_names_in_]) == detector.predict(X)).all()


@pytest.mark.filterwarnings("ignore:Skipping check check_array_api_input")
def test_follows_the_scikit_learn_estimator_contract():
    # every check of sklearn's default suite (55 in 1.9; check_array_api_input skips itself without
    # SCIPY_ARRAY_API). The separate check_dataframe_column_names_consistency is not run: it wants sklearn's
    # own multi-line message, where this detector raises a one-line UserError (a ValueError), tested above.
    check_estimator(ood.SparsityOODDetector())


class Spy(ood.SparsityOODDetector):
    """Records which prompts each clone is fit on and scored on (class-level, since clones are fresh objects)."""

    calls: list = []

    def fit(self, X, y):
        Spy.calls.append(("fit", set(X.index)))
        return super().fit(X, y)

    def decision_function(self, X):
        Spy.calls.append(("score", set(X.index)))
        return super().decision_function(X)


def test_leave_family_out_never_trains_on_what_it_tests():
    P = table(shift=2.0)
    X, y = ood.profiles(P)
    families = X.index.get_level_values("suite")
    Spy.calls.clear()
    results = ood.leave_family_out(X, y, families, Spy(), n_boot=100)
    assert [c[0] for c in Spy.calls] == ["fit", "score"] * 3
    id_tested = set()
    for family, (_, trained), (_, tested) in zip(sorted(FAMILIES), Spy.calls[::2], Spy.calls[1::2]):
        held = {k for k in X.index if k[0] == family}
        assert not trained & tested and held <= tested and not held & trained
        assert {k[0] for k in tested} == {family, "prose"}
        assert {k[0] for k in trained} == {"prose"} | set(FAMILIES) - {family}
        id_tested |= {k for k in tested if k[0] == "prose"}
        assert len([k for k in tested if k[0] == "prose"]) == 18  # 30 % of 60 ID prompts
    assert len(id_tested) > 18  # each family gets its own seeded ID split
    assert results["n_ood"].tolist() == [30] * 3 and results["n_id"].tolist() == [18] * 3


METHODS = ["sparsity_profile", "token_count", "nll_per_token", "max_softmax", "baselines_lr"]


def test_leave_family_out_scores_detector_and_baselines_side_by_side():
    P = table(shift=2.0)
    X, y = ood.profiles(P)
    families = X.index.get_level_values("suite")
    results = ood.leave_family_out(X, y, families, baselines=ood.baseline_scores(P), n_boot=300)
    assert results["method"].tolist() == METHODS * 3
    assert results["family"].tolist() == [f for f in sorted(FAMILIES) for _ in range(len(METHODS))]
    detector, baseline = results[results.method == "sparsity_profile"], results[results.method != "sparsity_profile"]
    assert (detector.auroc > 0.95).all() and (detector.lo <= detector.auroc).all()
    assert (detector.auroc <= detector.hi).all()
    assert (baseline.lo < 0.5).all() and (baseline.hi > 0.5).all()  # planted no signal in length, nll, max_prob
    assert (detector.profile_minus_best_lo > 0).all()  # the profile beats the best baseline, paired CI above 0
    r = results.iloc[1]
    assert r.fpr[0] == 0 and r.fpr[-1] == 1 and r.tpr[-1] == 1 and np.trapezoid(r.tpr, r.fpr) == pytest.approx(r.auroc)
    table_ = ood.versus_baseline(results)
    assert list(table_.family) == sorted(FAMILIES) and (table_.profile == detector.auroc.to_numpy()).all()
    fig = roc_figure(results)
    assert len(fig.data) == 15 + 3  # 3 families × 5 methods + a chance line per panel
    assert "sparsity_profile" in fig.data[0].name and f"{detector.auroc.iloc[0]:.2f}" in fig.data[0].name


def test_a_length_signal_is_caught_by_the_token_count_baseline():
    """OOD prompts that are only longer: the token count baseline is perfect, the profile (no signal) is not, and
    the paired difference profile − best baseline lies below 0."""
    P = table(shift=0.0)
    longer = P.split.eq("ood")
    P.loc[longer, "prompt_tokens"] += 60
    X, y = ood.profiles(P)
    results = ood.leave_family_out(X, y, X.index.get_level_values("suite"), baselines=ood.baseline_scores(P),
                                   n_boot=300)
    v = ood.versus_baseline(results)
    assert (v.best_baseline == "token_count").all() and (v.baseline == 1.0).all()
    assert (v.hi < 0).all()


def test_auroc_draws_pair_the_resamples():
    """Two nearly identical scores: each AUROC is uncertain, their paired difference is not; sklearn agrees on
    the point values, and resampling clusters that hold one ID and one OOD prompt still varies the AUROC."""
    from sparsescope.stats import _interval, auroc_draws

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(40)]
    a = rng.normal(y * 0.8, 1)
    b = a + rng.normal(0, 0.01, len(a))
    d = auroc_draws(y, {"a": a, "b": b}, n_boot=2000)
    assert d["a"][0] == pytest.approx(roc_auc_score(y, a)) and d["b"][0] == pytest.approx(roc_auc_score(y, b))
    width_a = np.subtract(*_interval(d["a"][1][:, None], 0.95)[::-1])[0]
    width_diff = np.subtract(*_interval((d["a"][1] - d["b"][1])[:, None], 0.95)[::-1])[0]
    assert width_diff < width_a / 10
    groups = np.r_[np.arange(40), np.arange(40)]  # each OOD prompt shares a source with one ID prompt
    copies = np.r_[a[:40], a[:40] + 0.8]  # perfectly paired: the AUROC varies with which sources are drawn
    paired = auroc_draws(y, {"a": copies}, groups, n_boot=2000)["a"][1]
    assert paired.std() > 0 and abs(paired.mean() - roc_auc_score(y, copies)) < 0.02


def test_leave_family_out_needs_two_families():
    X, y = ood.profiles(table(shift=2.0))
    with pytest.raises(UserError, match="at least 2 OOD families"):
        ood.leave_family_out(X, y, np.where(y == 1, "ood", "id"))

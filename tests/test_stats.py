"""Bootstrap CIs, effect sizes, corrections and ladder trends, checked against closed forms and scipy."""

import warnings

import numpy as np
import pandas as pd
import pytest
from _tables import FEATURES, prompts_table
from scipy import stats as sps

from sparsescope import stats
from sparsescope.errors import UserError


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    # the percentile bootstrap undercovers on small skewed samples: over 3000 repeats it covered 0.928 at n = 50
    # and 0.938 at n = 100 (exponential), so n = 100 keeps the check away from the 0.92 edge
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(400):
        x = rng.exponential(scale=2.0, size=100)  # skewed, true mean 2
        _, lo, hi = stats.bootstrap_ci(x, seed=rep)
        hits += lo <= 2.0 <= hi
    assert 0.92 <= hits / 400 <= 0.975


def test_weighted_mean_and_bounds():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=30), rng.integers(1, 100, size=30)
    mean, lo, hi = stats.bootstrap_ci(x, weights=w)
    assert mean == pytest.approx(np.average(x, weights=w), rel=1e-12)
    assert lo < mean < hi
    # the percentile interval of explicitly resampled weighted means, same draws
    idx = np.random.default_rng(0).integers(0, 30, size=(2000, 30))
    boots = (x[idx] * w[idx]).sum(1) / w[idx].sum(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), rel=1e-9)


def test_one_value_gives_nan_bounds_and_a_warning():
    with pytest.warns(UserWarning, match="at least 2"):
        mean, lo, hi = stats.bootstrap_ci([3.0])
    assert mean == 3.0 and np.isnan(lo) and np.isnan(hi)


def test_bad_weights_are_a_user_error():
    with pytest.raises(UserError, match="weights"):
        stats.bootstrap_ci([1.0, 2.0], weights=[1.0])


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = len(a), len(b)
    sp = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return (1 - 3 / (4 * (na + nb) - 9)) * (b.mean() - a.mean()) / sp


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (b.mean() - a.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * sps.t.sf(abs(t), df)


def planted(shift: float, n_id: int = 40, n_ood: int = 30, seed: int = 0) -> pd.DataFrame:
    """OOD shifted by `shift` on feature 5 only; every other feature has the same distribution in both splits."""
    return prompts_table(
        [("prose", "id", 0, n_id), ("b64", "ood", 0, n_ood)],
        lambda rng, split, level, f, i: rng.normal(shift * (split == "ood" and f == 5), 1.0),
        seed=seed,
    )


def test_effect_table_matches_closed_forms():
    P = planted(shift=1.0)
    df = stats.effect_table(P, n_boot=4000)
    assert len(df) == len(FEATURES)
    assert df.attrs["diff"] == "ood_minus_id" and "Wald" in df.attrs["test"]
    for _, row in df.iterrows():
        rows = P[(P.layer == row.layer) & (P.site == row.site) & (P.metric == row.metric)]
        a, b = rows[rows.split == "id"].value.to_numpy(), rows[rows.split == "ood"].value.to_numpy()
        assert row.mean_a == pytest.approx(a.mean(), rel=1e-12)  # the estimand: mean of per-prompt values
        assert row.ood_minus_id == pytest.approx(b.mean() - a.mean(), rel=1e-12)
        assert row.g == pytest.approx(hedges_g(a, b), rel=1e-10)
        # every prompt its own cluster: the bootstrap SE approaches the plug-in SE of a difference of means
        plug_in = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert row.se == pytest.approx(plug_in, rel=0.06)
        assert row.p == pytest.approx(2 * sps.norm.sf(abs(b.mean() - a.mean()) / row.se), rel=1e-9)
        assert row.ood_minus_id_lo < row.ood_minus_id < row.ood_minus_id_hi and row.g_lo < row.g < row.g_hi
    shifted = df.iloc[5]
    assert shifted.p_holm < 0.05 and shifted.ood_minus_id_lo > 0
    counts = stats.n_significant(df)
    assert counts["n_significant"].sum() == 1 and counts["n_up"].sum() == 1 and counts["n_down"].sum() == 0


def test_effect_table_resamples_source_texts_not_prompts():
    """OOD prompts derived from the ID texts (value = its source's + 0.3 + small noise): paired by source, the
    difference is known to within the noise, so the cluster bootstrap SE is the paired one, far below the
    SE that treats the 2n prompts as independent."""
    rng = np.random.default_rng(1)
    n = 60
    base = rng.normal(0, 1, n)
    ood = base + 0.3 + rng.normal(0, 0.05, n)
    rows = [dict(model="m", run_id="r", suite=s, split=sp, level=0, prompt_id=f"{s}-{i}", source_id=f"prose/{i}",
                 layer=0, site="mlp.hook_post", metric="hoyer", threshold=np.nan, value=v, n_tokens=32)
            for s, sp, vals in (("prose", "id", base), ("noise", "ood", ood)) for i, v in enumerate(vals)]
    P = pd.DataFrame(rows)
    row = stats.effect_table(P, n_boot=4000).iloc[0]
    paired = (ood - base).std(ddof=0) / np.sqrt(n)
    unpaired = np.sqrt(base.var() / n + ood.var() / n)
    assert row.se == pytest.approx(paired, rel=0.1) and row.se < unpaired / 5
    assert row.ood_minus_id_lo > 0.25 and row.p < 1e-6
    independent = stats.effect_table(P.drop(columns="source_id"), n_boot=4000).iloc[0]
    assert independent.se == pytest.approx(unpaired, rel=0.1)


def test_hedges_g_recovers_a_planted_standardized_difference():
    P = planted(shift=0.8, n_id=1500, n_ood=1500)
    g = stats.effect_table(P, n_boot=200).iloc[5]
    assert g.g == pytest.approx(0.8, abs=0.1)
    assert g.g_lo < 0.8 < g.g_hi


def test_one_prompt_split_gives_nan_cis_and_a_warning():
    P = planted(shift=1.0, n_ood=1)
    with pytest.warns(UserWarning, match="fewer than 2 prompts"):
        df = stats.effect_table(P, n_boot=100)
    assert df[["ood_minus_id_lo", "ood_minus_id_hi", "g_lo", "g_hi"]].isna().all().all()
    assert df["mean_b"].notna().all()
    with pytest.warns(UserWarning, match="fewer than 2 prompts in b64/ood"):
        means = stats.split_means(P, n_boot=100)
    assert means.loc[means.split == "ood", ["lo", "hi"]].isna().all().all()
    assert means.loc[means.split == "id", ["lo", "hi"]].notna().all().all()


P_FIXED = np.array([0.01, 0.04, 0.03, 0.005, 0.2, np.nan, 0.04, 0.5])


def holm_by_hand(p):
    ok = [i for i in range(len(p)) if not np.isnan(p[i])]
    order = sorted(ok, key=lambda i: p[i])
    m, adj, running = len(order), np.full(len(p), np.nan), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        adj[i] = running
    return adj


def bh_by_hand(p):
    ok = [i for i in range(len(p)) if not np.isnan(p[i])]
    order = sorted(ok, key=lambda i: p[i])
    m, adj = len(order), np.full(len(p), np.nan)
    for j, i in enumerate(order):
        adj[i] = min(min(1.0, m * p[k] / (r + 1)) for r, k in enumerate(order) if r >= j)
    return adj


def test_holm_and_bh_equal_hand_implementations():
    np.testing.assert_allclose(stats.holm(P_FIXED), holm_by_hand(P_FIXED), rtol=1e-12)
    np.testing.assert_allclose(stats.benjamini_hochberg(P_FIXED), bh_by_hand(P_FIXED), rtol=1e-12)
    # Holm's step-down rule: reject p_(i) while p_(i) <= alpha / (m - i + 1)
    p = P_FIXED[~np.isnan(P_FIXED)]
    ps, m, n_reject = np.sort(p), len(p), 0
    while n_reject < m and ps[n_reject] <= 0.05 / (m - n_reject):
        n_reject += 1
    assert (stats.holm(p) <= 0.05).sum() == n_reject


def test_n_significant_rejects_unknown_methods():
    with pytest.raises(UserError, match="holm"):
        stats.n_significant(stats.effect_table(planted(1.0), n_boot=50), method="bonferonni")


def test_split_means_are_token_weighted():
    P = planted(shift=1.0)
    means = stats.split_means(P, n_boot=100)
    pick = (means.split == "ood") & (means.layer == 1) & (means.site == "mlp.hook_post") & means.threshold.isna()
    row = means[pick].iloc[0]
    rows = P[(P.split == "ood") & (P.layer == 1) & (P.site == "mlp.hook_post") & P.threshold.isna()]
    assert row["mean"] == pytest.approx(np.average(rows.value, weights=rows.n_tokens), rel=1e-12)
    assert row.n_prompts == 30 and row.lo < row["mean"] < row.hi


LEVELS = (0, 10, 25, 50, 100)


def ladder(slope: float, n_sources: int = 12, source_sd: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """One clean text per source at each level; feature 0 rises with level, values rounded so ties occur."""
    offsets = np.random.default_rng(seed + 1).normal(0, source_sd, size=n_sources)
    return prompts_table(
        [("ladder", f"shuffle@{lv}", lv, n_sources) for lv in LEVELS],
        lambda rng, split, level, f, i: round(offsets[i] + slope * level * (f == 0) + rng.normal(0, 1.0), 1),
        seed=seed,
    )


def test_trend_rho_matches_scipy_spearmanr_with_ties():
    P = ladder(slope=0.02)
    df = stats.trend_table(P, "shuffle", n_boot=200)
    assert df.attrs["paired"]
    for _, row in df.iterrows():
        rows = P[(P.layer == row.layer) & (P.site == row.site) & (P.metric == row.metric)]
        assert row.rho == pytest.approx(sps.spearmanr(rows.level, rows.value).statistic, rel=1e-10)
    assert df.iloc[0].direction == "increasing" and df.iloc[0].p < 0.01
    assert (df.rho_lo <= df.rho).all() and (df.rho <= df.rho_hi).all()


def test_weighted_ranks_equal_spearman_of_the_expanded_sample():
    rng = np.random.default_rng(3)
    level = np.repeat([0.0, 10, 25, 50], 6)[:, None]
    X = np.round(rng.normal(size=(24, 3)), 1)  # ties
    source = np.tile(np.arange(6), 4)  # rows of one source share a count, as in the paired bootstrap
    counts = rng.integers(0, 4, size=(5, 6)).astype(float)
    w = counts[:, source]
    Rx = stats._weighted_ranks(counts, stats._below(level), source)[:, 0]
    rho = stats._wcorr(Rx, stats._weighted_ranks(counts, stats._below(X), source), w)
    for b in range(5):
        reps = w[b].astype(int)
        for f in range(3):
            expected = sps.spearmanr(np.repeat(level[:, 0], reps), np.repeat(X[:, f], reps)).statistic
            assert rho[b, f] == pytest.approx(expected, rel=1e-10)


def test_cluster_bootstrap_draws_within_strata():
    level = np.repeat(np.arange(3), [4, 5, 6])
    counts = stats._cluster_counts(np.arange(15), level, 50, np.random.default_rng(0))  # unpaired: rows within levels
    assert [counts[:, level == lv].sum(axis=1).tolist() for lv in range(3)] == [[4] * 50, [5] * 50, [6] * 50]
    counts = stats._cluster_counts(np.repeat(np.arange(6), 5), np.zeros(30, dtype=int), 50, np.random.default_rng(0))
    assert counts.shape == (50, 6) and (counts.sum(axis=1) == 6).all()  # paired: whole sources


def test_permutation_p_matches_spearman_t_approximation_without_pairing():
    P = ladder(slope=0.004, n_sources=40)
    P["prompt_id"] = P["prompt_id"].str.replace("@", "#")  # ids no longer name a source: unpaired design
    row = stats.trend_table(P, "shuffle", n_boot=2000).iloc[0]
    rows = P[(P.layer == 0) & (P.site == "attn.hook_z") & (P.metric == "near_zero_frac")]
    expected = sps.spearmanr(rows.level, rows.value).pvalue
    assert 0.005 < expected < 0.2  # a p-value where the comparison means something
    assert row.p == pytest.approx(expected, abs=0.02)


def test_keeping_the_pairing_sharpens_the_test_when_sources_differ():
    P = ladder(slope=0.01, source_sd=3.0)
    paired = stats.trend_table(P, "shuffle", n_boot=2000)
    P["prompt_id"] = P["prompt_id"].str.replace("@", "#")
    unpaired = stats.trend_table(P, "shuffle", n_boot=2000)
    assert paired.attrs["paired"] and not unpaired.attrs["paired"]
    assert paired.rho.tolist() == unpaired.rho.tolist()
    assert paired.iloc[0].p < 0.01 < unpaired.iloc[0].p


def test_user_errors_name_the_problem():
    P = planted(1.0)
    with pytest.raises(UserError, match="'ood2'"):
        stats.effect_table(P, b="ood2")
    with pytest.raises(UserError, match="ladders in this table"):
        stats.trend_table(P, "shuffle")
    with pytest.raises(UserError, match="mixes models"):
        stats.effect_table(pd.concat([P, P.assign(model="other")]))
    with pytest.raises(UserError, match="several runs"):
        stats.effect_table(pd.concat([P, P.assign(run_id="again")]))


def test_missing_values_are_skipped_not_propagated():
    P = planted(1.0)
    P.loc[(P.prompt_id == "prose-0") & (P.layer == 0), "value"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = stats.effect_table(P, n_boot=100)
    assert (df.loc[df.layer == 0, "n_a"] == 39).all()
    assert df[["mean_a", "ood_minus_id_lo", "g", "p"]].notna().all().all()


def test_auroc_ci_matches_sklearn_on_explicit_resamples():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = np.r_[np.ones(20, dtype=int), np.zeros(30, dtype=int)]
    score = np.round(rng.normal(y * 0.8), 1)  # rounded: ties count ½
    auroc, lo, hi = stats.auroc_ci(y, score, n_boot=300, seed=2)
    assert auroc == pytest.approx(roc_auc_score(y, score), rel=1e-12)
    draws = np.random.default_rng(2)
    pos, neg = score[:20], score[20:]
    ip, ineg = draws.integers(0, 20, size=(300, 20)), draws.integers(0, 30, size=(300, 30))
    boots = [roc_auc_score(np.r_[np.ones(20), np.zeros(30)], np.r_[pos[a], neg[b]]) for a, b in zip(ip, ineg)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), rel=1e-9)
    with pytest.warns(UserWarning, match="2 prompts per class"):
        assert np.isnan(stats.auroc_ci([1, 0, 0], [0.9, 0.1, 0.2])[1])


def test_trend_of_a_feature_with_missing_values_is_nan_with_a_warning():
    P = ladder(slope=0.02)
    P.loc[(P.prompt_id == "ladder-0@10") & (P.layer == 2), "value"] = np.nan
    with pytest.warns(UserWarning, match="4 features lack values"):
        df = stats.trend_table(P, "shuffle", n_boot=100)
    assert df.loc[df.layer == 2, ["rho", "p"]].isna().all().all()
    assert df.loc[df.layer < 2, ["rho", "rho_lo", "p"]].notna().all().all()

"""Statistics over prompts: bootstrap CIs, ID-vs-OOD effect sizes with corrected p-values, trends along ladders.

The unit is the prompt (a row group of the `prompts` table): resampling draws prompts, never tokens. Every
function works on all layer × site × metric × threshold features at once, as prompts × features matrices.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from sparsescope.errors import UserError

FEATURE = ["layer", "site", "metric", "threshold"]
PROMPT_COLUMNS = ["model", "suite", "split", "level", "prompt_id", *FEATURE, "value", "n_tokens"]
_CHUNK = 1 << 20  # elements per (resample × prompt × feature) block: bounds memory at a few tens of MB


# ---- resampling core ------------------------------------------------------------------------------------------


def _counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] how often each of n items is drawn in each resample of n draws with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _wmean(C: np.ndarray, X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """[n_boot, F] weighted column means of X [n, F] with each row counted C[b, i] times; NaN entries are skipped."""
    ok = ~np.isnan(X)
    W = np.where(ok, W, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (C @ np.where(ok, X * W, 0.0)) / (C @ W)


def _moments(C: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample and column: count, mean and sample variance (ddof 1) of the non-NaN entries of X."""
    ok = ~np.isnan(X)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        centre = np.nanmean(X, axis=0)  # centring keeps E[x²] − E[x]² from cancelling
        Xc = np.where(ok, X - centre, 0.0)
        n = C @ ok
        mean = (C @ Xc) / n
        var = ((C @ Xc**2) / n - mean**2) * n / (n - 1)
        return n, mean + centre, var


def _hedges_g(Ca: np.ndarray, Xa: np.ndarray, Cb: np.ndarray, Xb: np.ndarray) -> np.ndarray:
    """Hedges' g of b versus a (pooled SD, small-sample factor J = 1 − 3 / (4(na + nb) − 9)) per resample."""
    na, ma, va = _moments(Ca, Xa)
    nb, mb, vb = _moments(Cb, Xb)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        return (1 - 3 / (4 * (na + nb) - 9)) * (mb - ma) / pooled


def _interval(boots: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring resamples where the statistic is undefined."""
    quantile = np.nanquantile if np.isnan(boots).any() else np.quantile  # nanquantile loops over columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN bounds
        lo, hi = quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return lo, hi


def _check_ci(n_boot: int, ci: float) -> None:
    if not 0 < ci < 1 or n_boot < 1:
        raise UserError(f"ci={ci}, n_boot={n_boot}: ci must lie in (0, 1) and n_boot ≥ 1, e.g. ci=0.95, n_boot=2000")


def bootstrap_ci(
    values, weights=None, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the (weighted) mean of `values` and its percentile-bootstrap interval over items.

    Pass `weights=n_tokens` for the token-weighted mean that defines a split's value. NaN values are skipped.
    With fewer than 2 values the bounds are NaN and a warning says so.
    """
    _check_ci(n_boot, ci)
    v = np.asarray(values, dtype=float).reshape(-1, 1)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float).reshape(-1, 1)
    if w.shape != v.shape or (w < 0).any():
        raise UserError(f"weights must be {len(v)} non-negative numbers, one per value (got shape {w.shape})")
    mean = float(_wmean(np.ones((1, len(v))), v, w)[0, 0]) if len(v) else float("nan")
    n = int((~np.isnan(v)).sum())
    if n < 2:
        warnings.warn(f"bootstrap CI needs at least 2 values, got {n}: bounds are NaN", stacklevel=2)
        return mean, float("nan"), float("nan")
    boots = _wmean(_counts(len(v), n_boot, np.random.default_rng(seed)), v, w)
    lo, hi = _interval(boots, ci)
    return mean, float(lo[0]), float(hi[0])


def auroc_ci(y, score, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(auroc, lo, hi): AUROC of `score` for y = 1 with a bootstrap interval resampling each class separately."""
    _check_ci(n_boot, ci)
    y, score = np.asarray(y), np.asarray(score, dtype=float)
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise UserError(f"AUROC needs both classes; got {len(pos)} OOD and {len(neg)} ID prompts")
    wins = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])  # [pos, neg]: 1, ½ for a tie, 0
    if min(len(pos), len(neg)) < 2:
        warnings.warn(
            f"AUROC CI needs at least 2 prompts per class, got {len(pos)} OOD and {len(neg)} ID: bounds are NaN",
            stacklevel=2,
        )
        return float(wins.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    Cp, Cn = _counts(len(pos), n_boot, rng), _counts(len(neg), n_boot, rng)
    boots = ((Cp @ wins) * Cn).sum(axis=1) / (len(pos) * len(neg))
    lo, hi = _interval(boots[:, None], ci)
    return float(wins.mean()), float(lo[0]), float(hi[0])


def auroc_draws(y, scores: dict[str, np.ndarray], groups=None, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUROC of each score for y = 1 and its values on the same cluster-bootstrap resamples (paired draws).

    groups: one cluster label per row (e.g. the source text, so a passage and the prompts derived from it move
    together); default: each row its own cluster. Clusters are resampled within two strata (those with a y = 0 row,
    those without), so both classes are present in every resample. Returns {name: (auroc, draws [n_boot])}; a
    resample's AUROC weighs each (positive, negative) pair by how often both rows were drawn.
    """
    y = np.asarray(y)
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise UserError(f"AUROC needs both classes; got {pos.sum()} OOD and {neg.sum()} ID prompts")
    cluster = np.arange(len(y)) if groups is None else pd.factorize(np.asarray(groups, dtype=str))[0]
    has_neg = np.bincount(cluster, weights=neg, minlength=cluster.max() + 1) > 0
    R = _cluster_counts(cluster, has_neg[cluster], n_boot, np.random.default_rng(seed))[:, cluster]
    Rp, Rn = R[:, pos], R[:, neg]
    out = {}
    for name, score in scores.items():
        score = np.asarray(score, dtype=float)
        wins = (score[pos][:, None] > score[neg][None]) + 0.5 * (score[pos][:, None] == score[neg][None])
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = ((Rp @ wins) * Rn).sum(axis=1) / (Rp.sum(axis=1) * Rn.sum(axis=1))
        out[name] = (float(wins.mean()), draws)
    return out


# ---- prompts tables as matrices ---------------------------------------------------------------------------------


def check_prompts(prompts: pd.DataFrame) -> None:
    """Raise UserError unless `prompts` has the recorder's columns and one model."""
    missing = [c for c in PROMPT_COLUMNS if c not in prompts.columns]
    if missing:
        raise UserError(f"the prompts table lacks columns {missing}; pass the recorder's `prompts` table")
    models = prompts["model"].unique()
    if len(models) > 1:
        raise UserError(f"the prompts table mixes models {list(models)}; select one, e.g. prompts[prompts.model == m]")


def prompt_matrix(rows: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """(X, W, features, index): prompts × features matrices of value and n_tokens (NaN / 0 where absent).

    `keys` name a prompt (e.g. split, suite, prompt_id); `features` and `index` label the columns and rows.
    """
    rows = rows.reset_index(drop=True)
    feat = rows.groupby(FEATURE, dropna=False, sort=True)
    prom = rows.groupby(keys, dropna=False, sort=True)
    fi, pi = feat.ngroup().to_numpy(), prom.ngroup().to_numpy()
    if pd.Series(pi * feat.ngroups + fi).duplicated().any():
        raise UserError(
            "a prompt has several rows for one layer/site/metric/threshold (tables from several runs?); "
            "keep one run, e.g. prompts[prompts.run_id == r]"
        )
    X = np.full((prom.ngroups, feat.ngroups), np.nan)
    W = np.zeros_like(X)
    X[pi, fi] = rows["value"].to_numpy(dtype=float)
    W[pi, fi] = rows["n_tokens"].to_numpy(dtype=float)
    features = feat.size().index.to_frame(index=False)[FEATURE]
    index = prom.size().index.to_frame(index=False)[keys]
    return X, W, features, index


def _chunks(n_features: int, per_feature: int):
    """Column slices small enough that a (per_feature × columns) block stays near _CHUNK elements."""
    step = max(1, _CHUNK // max(1, per_feature))
    return (slice(i, min(i + step, n_features)) for i in range(0, n_features, step))


def _warn_small(labels: list[str]) -> None:
    if labels:
        warnings.warn(f"fewer than 2 prompts in {', '.join(labels)}: CI bounds are NaN", stacklevel=3)


# ---- per-split means, ID vs OOD -----------------------------------------------------------------------------------


def split_means(prompts: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Token-weighted mean per suite × split × level × feature with a bootstrap CI over prompts (curves with bands).

    Columns: suite, split, level, layer, site, metric, threshold, n_prompts, mean, lo, hi.
    """
    _check_ci(n_boot, ci)
    check_prompts(prompts)
    X, W, features, index = prompt_matrix(prompts, ["suite", "split", "level", "prompt_id"])
    rng = np.random.default_rng(seed)
    out, small = [], []
    for (suite, split, level), rows in index.groupby(["suite", "split", "level"], sort=True).groups.items():
        Xg, Wg = X[rows], W[rows]
        n = (~np.isnan(Xg)).sum(axis=0)
        lo, hi = np.full(len(features), np.nan), np.full(len(features), np.nan)
        if len(rows) >= 2:
            C = _counts(len(rows), n_boot, rng)
            for cols in _chunks(len(features), n_boot):
                lo[cols], hi[cols] = _interval(_wmean(C, Xg[:, cols], Wg[:, cols]), ci)
        lo[n < 2] = hi[n < 2] = np.nan
        if (n < 2).any():
            small.append(f"{suite}/{split}")
        mean = _wmean(np.ones((1, len(rows))), Xg, Wg)[0]
        out.append(features.assign(suite=suite, split=split, level=level, n_prompts=n, mean=mean, lo=lo, hi=hi))
    _warn_small(small)
    df = pd.concat(out, ignore_index=True)
    return df[["suite", "split", "level", *FEATURE, "n_prompts", "mean", "lo", "hi"]]


def holm(p) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error); NaN entries are left out of the family."""
    p = np.asarray(p, dtype=float)
    adj = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adj


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate); NaN entries are left out of the family."""
    p = np.asarray(p, dtype=float)
    adj = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        adj[ok] = sps.false_discovery_control(p[ok], method="bh")
    return adj


def diff_column(a: str = "id", b: str = "ood") -> str:
    """The one sign convention for differences, spelt out in the column name: `ood_minus_id` = OOD − ID."""
    return f"{b}_minus_{a}"


def clusters(index: pd.DataFrame) -> np.ndarray:
    """Bootstrap unit per prompt row: its `source_id` (prompts derived from one clean text share it) when the
    index has that column, else the prompt itself."""
    if "source_id" not in index.columns:
        return np.arange(len(index))
    return pd.factorize(index["source_id"].astype(str))[0]


def effect_table(
    prompts: pd.DataFrame, a: str = "id", b: str = "ood", n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Split b versus split a for every layer × site × metric × threshold, prompts pooled over suites.

    Estimand: the difference of the means of per-prompt values, column `{b}_minus_{a}` (e.g. `ood_minus_id`; with
    matched windows every prompt counts the same tokens, so it is also the token-weighted difference). Its CI
    (`_lo`, `_hi`) and its test come from one cluster bootstrap: the unit is the source text (`source_id`: a
    clean passage and every prompt derived from it move together), resampled within two strata (clusters with an
    `a` prompt, clusters without). p: two-sided Wald test of that same difference with the bootstrap standard
    error `se`; p_holm, p_bh: p adjusted over all rows (Holm–Bonferroni, Benjamini–Hochberg). The sign of the
    difference is the direction. g: Hedges' g of the per-prompt values, CI from the same resamples.
    Also: n_a, n_b (prompts), mean_a, mean_b.
    """
    _check_ci(n_boot, ci)
    check_prompts(prompts)
    present = set(prompts["split"].unique())
    if a not in present or b not in present:
        raise UserError(f"splits {a!r} and {b!r} must both be in the table; it has {sorted(present)}")
    rows = prompts[prompts["split"].isin([a, b])]
    keys = ["split", "suite", "prompt_id"] + (["source_id"] if "source_id" in rows.columns else [])
    X, _, features, index = prompt_matrix(rows, keys)
    ia, ib = (index["split"] == a).to_numpy(), (index["split"] == b).to_numpy()
    cluster = clusters(index)
    has_a = np.bincount(cluster, weights=ia, minlength=cluster.max() + 1) > 0
    R = _cluster_counts(cluster, has_a[cluster], n_boot, np.random.default_rng(seed))[:, cluster]
    Xa, Xb, Ra, Rb = X[ia], X[ib], R[:, ia], R[:, ib]
    one_a, one_b = np.ones((1, len(Xa))), np.ones((1, len(Xb)))
    F, name = len(features), diff_column(a, b)
    cols = {k: np.full(F, np.nan) for k in ("mean_a", "mean_b", "lo", "hi", "se", "g", "g_lo", "g_hi")}
    for s in _chunks(F, n_boot * 2):
        cols["mean_a"][s] = _wmean(one_a, Xa[:, s], np.ones_like(Xa[:, s]))[0]
        cols["mean_b"][s] = _wmean(one_b, Xb[:, s], np.ones_like(Xb[:, s]))[0]
        cols["g"][s] = _hedges_g(one_a, Xa[:, s], one_b, Xb[:, s])[0]
        boots = _wmean(Rb, Xb[:, s], np.ones_like(Xb[:, s])) - _wmean(Ra, Xa[:, s], np.ones_like(Xa[:, s]))
        cols["lo"][s], cols["hi"][s] = _interval(boots, ci)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cols["se"][s] = np.nanstd(boots, axis=0, ddof=1)
        cols["g_lo"][s], cols["g_hi"][s] = _interval(_hedges_g(Ra, Xa[:, s], Rb, Xb[:, s]), ci)
    n_a, n_b = (~np.isnan(Xa)).sum(axis=0), (~np.isnan(Xb)).sum(axis=0)
    small = (n_a < 2) | (n_b < 2)
    for k in ("lo", "hi", "se", "g_lo", "g_hi"):
        cols[k][small] = np.nan
    _warn_small([f"{a} or {b} for {small.sum()} features"] if small.any() else [])
    diff = cols["mean_b"] - cols["mean_a"]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(cols["se"] > 0, 2 * sps.norm.sf(np.abs(diff) / cols["se"]), np.nan)
    df = features.assign(n_a=n_a, n_b=n_b, mean_a=cols["mean_a"], mean_b=cols["mean_b"])
    df[name], df[f"{name}_lo"], df[f"{name}_hi"], df["se"] = diff, cols["lo"], cols["hi"], cols["se"]
    df = df.assign(g=cols["g"], g_lo=cols["g_lo"], g_hi=cols["g_hi"], p=p, p_holm=holm(p), p_bh=benjamini_hochberg(p))
    df.attrs |= {"a": a, "b": b, "diff": name, "effect": "Hedges' g",
                 "test": "Wald test of the mean difference, cluster-bootstrap SE (unit: source text)"}
    return df


def n_significant(df: pd.DataFrame, alpha: float = 0.05, method: str = "holm") -> pd.DataFrame:
    """Per site × metric × threshold of an `effect_table`: tests, significant (adjusted p < alpha), up, down.

    up / down: the sign of the tested difference (the table's `<b>_minus_<a>` column) among the significant rows.
    """
    column = {"holm": "p_holm", "bh": "p_bh", "none": "p"}.get(method)
    if column is None:
        raise UserError(f"method={method!r} is not a correction; use 'holm', 'bh' or 'none'")
    diff = next(c for c in df.columns if "_minus_" in c and not c.endswith(("_lo", "_hi")))
    sig = df[column] < alpha
    up, down = sig & (df[diff] > 0), sig & (df[diff] < 0)
    flags = df.assign(n_tests=df[column].notna(), n_significant=sig, n_up=up, n_down=down)
    counts = ["n_tests", "n_significant", "n_up", "n_down"]
    keys = [k for k in ("family", "site", "metric", "threshold") if k in df.columns]
    return flags.groupby(keys, dropna=False, sort=True)[counts].sum().reset_index()


# ---- trends along corruption ladders -------------------------------------------------------------------------------


def _below(X: np.ndarray) -> np.ndarray:
    """[F, m, m] K[f, r, r'] = 1 if X[r', f] < X[r, f], ½ if equal, else 0.

    With row r' counted w[r'] times, the mid-rank of row r in the expanded sample is ½ + Σ_r' w[r'] K[f, r, r'],
    so ranks under any bootstrap weights are one matrix product, with ties (and duplicates) handled exactly.
    """
    Xt = X.T
    return (Xt[:, None, :] < Xt[:, :, None]) + 0.5 * (Xt[:, None, :] == Xt[:, :, None])


def _weighted_ranks(C: np.ndarray, K: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """[B, F, m] mid-ranks when cluster j is drawn C[b, j] times (K from `_below`, cluster: code per row)."""
    by_cluster = K @ np.eye(C.shape[1])[cluster]  # [F, m, clusters]: K summed over each cluster's rows
    F, m, n = by_cluster.shape
    return 0.5 + (C @ by_cluster.transpose(2, 0, 1).reshape(n, F * m)).reshape(-1, F, m)


def _wcorr(Rx: np.ndarray, Ry: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[B, F] Pearson correlation of Rx [B, m] with each Ry[:, f] [B, m] over rows, row weights w [B, m]."""
    n, sx, sxx = w.sum(axis=1)[:, None], (w * Rx).sum(axis=1)[:, None], (w * Rx * Rx).sum(axis=1)[:, None]
    sy, sxy = np.einsum("bm,bfm->bf", w, Ry), np.einsum("bm,bfm->bf", w * Rx, Ry)
    syy = np.einsum("bm,bfm,bfm->bf", w, Ry, Ry)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n * sxy - sx * sy) / np.sqrt((n * sxx - sx**2) * (n * syy - sy**2))


def _ladder_design(index: pd.DataFrame) -> tuple[bool, np.ndarray]:
    """(paired, source codes): paired when prompt ids are `<source>@<level>`, one row per source and level."""
    source, _, suffix = index["prompt_id"].astype(str).str.rpartition("@").T.to_numpy()
    key = index["suite"].astype(str) + "\0" + pd.Series(source, index=index.index)
    paired = bool((source != "").all() and (suffix == index["level"].astype(str)).all())
    paired &= not pd.DataFrame({"k": key, "l": index["level"]}).duplicated().any()
    return paired, pd.factorize(key)[0] if paired else np.arange(len(index))


def _cluster_counts(cluster: np.ndarray, stratum: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[B, clusters] draw counts of a bootstrap that resamples clusters with replacement within each stratum."""
    counts = np.zeros((n_boot, cluster.max() + 1))
    for s in np.unique(stratum):
        ids = np.unique(cluster[stratum == s])
        counts[:, ids] = _counts(len(ids), n_boot, rng)
    return counts


def _block_permutations(block: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, m] row permutations that shuffle rows only within their block."""
    perm = np.tile(np.arange(len(block)), (n_perm, 1))
    for b in np.unique(block):
        rows = np.flatnonzero(block == b)
        perm[:, rows] = rng.permuted(np.tile(rows, (n_perm, 1)), axis=1)
    return perm


def ladders(prompts: pd.DataFrame) -> list[str]:
    """Names of the corruption ladders in a prompts table (split prefixes before `@`)."""
    return sorted({s.rpartition("@")[0] for s in map(str, prompts["split"].unique()) if "@" in s})


def trend_table(
    prompts: pd.DataFrame, ladder: str, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Spearman rho between corruption level and per-prompt value along one ladder, per layer × site × metric.

    Splits `<ladder>@<level>` form the ladder. When prompt ids are `<source>@<level>` (one clean text corrupted at
    each level) the bootstrap resamples source texts and the permutation test (p, two-sided, `n_boot` permutations)
    shuffles levels within each source, keeping the pairing; otherwise rows are resampled within each level and
    permuted freely. direction: "increasing" / "decreasing" when the rho CI excludes 0, else "none".
    Columns: layer, site, metric, threshold, n_prompts, rho, rho_lo, rho_hi, p, direction.
    Per-level means with CIs for curves: `split_means` on the ladder's rows.
    """
    _check_ci(n_boot, ci)
    check_prompts(prompts)
    rows = prompts[prompts["split"].astype(str).str.startswith(f"{ladder}@")]
    if rows.empty:
        raise UserError(f"no splits named {ladder}@<level>; ladders in this table: {ladders(prompts)}")
    X, _, features, index = prompt_matrix(rows, ["level", "suite", "prompt_id"])
    level = index["level"].to_numpy(dtype=float)[:, None]
    paired, cluster = _ladder_design(index)
    rng = np.random.default_rng(seed)
    counts = _cluster_counts(cluster, np.zeros_like(cluster) if paired else pd.factorize(level[:, 0])[0], n_boot, rng)
    perms = _block_permutations(cluster if paired else np.zeros_like(cluster), n_boot, rng)
    w = counts[:, cluster]  # [B, m] how often each row is drawn
    Rx = _weighted_ranks(counts, _below(level), cluster)[:, 0]
    Rx0 = sps.rankdata(level[:, 0])
    dx = Rx0 - Rx0.mean()
    dx_perm = dx[perms] / np.sqrt((dx**2).sum())  # permuting rows within blocks keeps both rank sets
    complete = ~np.isnan(X).any(axis=0)
    if not complete.all():
        n = (~complete).sum()
        warnings.warn(f"{n} features lack values for some {ladder} prompts: their trend is NaN", stacklevel=2)
    F = len(features)
    rho, lo, hi, p = (np.full(F, np.nan) for _ in range(4))
    for s in _chunks(F, n_boot * len(X)):
        cols = np.flatnonzero(complete[s]) + s.start
        if not len(cols):
            continue
        Ry0 = sps.rankdata(X[:, cols], axis=0)
        rho[cols] = _wcorr(Rx0[None], Ry0.T[None], np.ones((1, len(X))))[0]
        lo[cols], hi[cols] = _interval(_wcorr(Rx, _weighted_ranks(counts, _below(X[:, cols]), cluster), w), ci)
        dy = Ry0 - Ry0.mean(axis=0)
        null = (dx_perm @ dy) / np.sqrt((dy**2).sum(axis=0))
        p[cols] = (1 + (np.abs(null) >= np.abs(rho[cols]) - 1e-12).sum(axis=0)) / (n_boot + 1)
    p[np.isnan(rho)] = np.nan
    direction = np.where(lo > 0, "increasing", np.where(hi < 0, "decreasing", "none"))
    df = features.assign(n_prompts=(~np.isnan(X)).sum(axis=0), rho=rho, rho_lo=lo, rho_hi=hi, p=p, direction=direction)
    df.attrs |= {"ladder": ladder, "paired": paired}
    return df


# ---- statistics of summed quantities ------------------------------------------------------------------------------


def bootstrap_sums(unit_sums: dict[str, np.ndarray], statistics, n_boot: int = 2000, seed: int = 0
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point values and bootstrap replicates of statistics that are functions of sums over units (ratios of sums,
    a variance from summed moments): `unit_sums[name]` is [n_units, ...]; `statistics(sums)` maps arrays summed over
    units (leading axis = resamples) to named [resamples] arrays. Resampling draws units (prompts), never tokens.
    Intervals: `percentile_interval(replicates, ci)`; differences between independent groups: subtract replicates."""
    if n_boot < 1:
        raise UserError(f"n_boot={n_boot} must be ≥ 1, e.g. 2000")
    n = len(next(iter(unit_sums.values())))
    point = {k: float(v[0]) for k, v in statistics({k: v.sum(0, keepdims=True) for k, v in unit_sums.items()}).items()}
    C = _counts(n, n_boot, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = statistics({k: np.tensordot(C, v, axes=1) for k, v in unit_sums.items()})
    return point, boots


def percentile_interval(replicates: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """(lo, hi) percentile interval of bootstrap replicates, NaN replicates skipped."""
    _check_ci(1, ci)
    lo, hi = _interval(np.asarray(replicates, dtype=float)[:, None], ci)
    return float(lo[0]), float(hi[0])

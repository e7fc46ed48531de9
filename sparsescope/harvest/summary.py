"""What a scan says, as tables: ID-vs-OOD means per layer and site, and the statistics over prompts (effects,
ladder trends, OOD detector) with their short summaries. Presentation of these lives in `sparsescope.show`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sparsescope.errors import UserError
from sparsescope.ood import baseline_scores, leave_family_out, profiles
from sparsescope.record.metrics import Metric
from sparsescope.stats import effect_table, ladders, n_significant, split_means, trend_table

ID, OOD = "id", "ood"
DIFF = "ood_minus_id"  # the one sign convention for differences, everywhere
DEFAULT_SITES = ("mlp.hook_post", "hook_resid_post", "attn.hook_z")


def metric_rows(activations: pd.DataFrame, metric: str = "hoyer", threshold: float | None = None) -> pd.DataFrame:
    """Rows of one metric at one threshold; `metric` may name both, as in 'near_zero_frac@0.1'."""
    m = Metric.parse(metric)
    name = m.name
    if not math.isnan(m.threshold):
        threshold = m.threshold
    rows = activations[activations["metric"] == name]
    if rows.empty:
        have = ", ".join(activations["metric"].unique())
        raise UserError(f"metric '{name}' is not in this run (it has: {have}); pick one of those")
    if threshold is not None:
        rows = rows[np.isclose(rows["threshold"], threshold)]
    thresholds = activations.loc[activations["metric"] == name, "threshold"].drop_duplicates()
    if rows.empty or rows["threshold"].nunique(dropna=False) > 1:
        have = ", ".join(Metric(name, x).label for x in sorted(thresholds))
        raise UserError(f"pick one threshold for '{name}': {have}")
    return rows


def metric_label(rows: pd.DataFrame) -> str:
    """'hoyer' or 'near_zero_frac@0.1' for rows of one metric."""
    return Metric(rows["metric"].iloc[0], float(rows["threshold"].iloc[0])).label


def pooled_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Token-weighted mean over a split's suites, per split, level, layer and site (NaN values carry no weight)."""
    known = rows["value"].notna()
    weights = rows["n_tokens"].where(known, 0)
    sums = (rows.assign(weighted=(rows["value"] * rows["n_tokens"]).where(known, 0.0), n_tokens=weights)
            .groupby(["split", "level", "layer", "site"], as_index=False, sort=False)[["weighted", "n_tokens"]].sum())
    sums["value"] = sums["weighted"] / sums["n_tokens"].replace(0, np.nan)
    return sums.drop(columns="weighted").sort_values(["level", "layer"], kind="stable", ignore_index=True)


def summary_table(activations: pd.DataFrame, metric: str = "hoyer", threshold: float | None = None,
                  sites: tuple[str, ...] | list[str] | None = DEFAULT_SITES) -> pd.DataFrame:
    """Per site and layer: ID mean, OOD mean and `ood_minus_id` = OOD − ID of one metric (ladder splits left out).

    `sites=None` keeps every site in the table; sites the run did not record are skipped.
    """
    rows = metric_rows(activations, metric, threshold)
    rows = rows[rows["split"].isin([ID, OOD])]
    if rows.empty:
        raise UserError("this run has no 'id' or 'ood' split to summarise; "
                        "record ID and OOD suites with `sparsescope scan`")
    present = list(rows["site"].unique())
    keep = present if sites is None else [s for s in sites if s in present]
    if not keep:
        raise UserError(f"none of the sites {', '.join(sites)} was recorded (the run has: {', '.join(present)}); "
                        "pick sites from that list")
    means = pooled_means(rows[rows["site"].isin(keep)])
    wide = means.pivot(index=["site", "layer"], columns="split", values="value").reindex(columns=[ID, OOD])
    wide[DIFF] = wide[OOD] - wide[ID]
    out = wide.reset_index().rename_axis(columns=None)
    out = out.sort_values(["site", "layer"], key=lambda c: c.map(keep.index) if c.name == "site" else c,
                          ignore_index=True)
    return out[["site", "layer", ID, OOD, DIFF]]


def layer_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary_table` output with one row per layer and (site, id|ood|ood_minus_id) columns, sites in order."""
    sites = list(dict.fromkeys(summary["site"]))
    wide = summary.pivot(index="layer", columns="site", values=[ID, OOD, DIFF]).swaplevel(axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([sites, [ID, OOD, DIFF]]))


EFFECT_METRICS = (("hoyer", math.nan), ("near_zero_frac", 0.1))


PROFILE_METRICS = (*EFFECT_METRICS, ("teal_sparsity", 0.1))


GROUPS = ("early", "middle", "late")


def _metric_pairs(prompts: pd.DataFrame, pairs) -> pd.DataFrame:
    """Rows of the given (metric, threshold) pairs (NaN threshold = none) outside the logits baseline rows."""
    keep = np.zeros(len(prompts), dtype=bool)
    for metric, threshold in pairs:
        t = prompts["threshold"].to_numpy(dtype=float)
        same = np.isnan(t) if math.isnan(threshold) else np.isclose(t, threshold)
        keep |= (prompts["metric"] == metric).to_numpy() & same
    return prompts[keep & (prompts["site"] != "logits").to_numpy()]


def layer_groups(prompts: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt values averaged over the early / middle / late third of the recorded layers (layer = 0, 1, 2)."""
    layers = np.sort(prompts["layer"].unique())
    group = dict(zip(layers, np.arange(len(layers)) * len(GROUPS) // len(layers)))
    keys = ["model", "suite", "split", "level", "prompt_id", "layer", "site", "metric", "threshold"]
    return (prompts.assign(layer=prompts["layer"].map(group))
            .groupby(keys, dropna=False, sort=False, observed=True)
            .agg(value=("value", "mean"), n_tokens=("n_tokens", "first")).reset_index())


def _sources(prompts: pd.DataFrame) -> pd.Series:
    """Source text (the bootstrap unit) per (suite, split, prompt_id); the prompt itself when not recorded."""
    first = prompts.drop_duplicates(["suite", "split", "prompt_id"]).set_index(["suite", "split", "prompt_id"])
    if "source_id" in first.columns:
        return first["source_id"].astype(str)
    return pd.Series(["/".join(map(str, k)) for k in first.index], index=first.index)


def statistics(prompts: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The run's statistic tables from its `prompts` table, as far as its splits allow.

    effects: `effect_table` OOD vs ID over hoyer and near_zero_frac@0.1, pooled (family "all") and per OOD suite
    (Holm over the rows of each family's block);
    trends: `trend_table` per ladder (column `ladder`), per layer and per layer group (`group`: layer or
    early/middle/late); ladder_means: `split_means` of the layer groups along each ladder;
    detector: `leave_family_out` with OOD suites as families, the sparsity profile (hoyer, near_zero_frac@0.1,
    teal_sparsity@0.1 on all recorded sites and layers) against every `baseline_scores` column and their logistic
    regression, CIs from a bootstrap over source texts.
    """
    out = {}
    splits = set(prompts["split"])
    if {ID, OOD} <= splits:
        rows = _metric_pairs(prompts, EFFECT_METRICS)
        ood_suites = sorted(rows.loc[rows["split"] == OOD, "suite"].unique())
        blocks = [("all", rows)] + [(f, rows[(rows["split"] == ID) | (rows["suite"] == f)]) for f in ood_suites]
        out["effects"] = pd.concat([effect_table(r, ID, OOD, n_boot=n_boot, seed=seed).assign(family=f)
                                    for f, r in blocks], ignore_index=True)  # Holm within each family's block
        if len(ood_suites) >= 2:
            X, y = profiles(_metric_pairs(prompts, PROFILE_METRICS))
            base = baseline_scores(prompts)  # encoders (no LM head): token count only, with a notice
            families = X.index.get_level_values("suite")
            groups = _sources(prompts).reindex(X.index).to_numpy()
            out["detector"] = leave_family_out(X, y, families, baselines=base, groups=groups, n_boot=n_boot,
                                               seed=seed)
    names = ladders(prompts)
    if names:
        rows = _metric_pairs(prompts, PROFILE_METRICS)
        rows = rows[rows["split"].str.contains("@")]
        groups = layer_groups(rows)
        trends, means = [], []
        for name in names:
            per_layer = trend_table(rows, name, n_boot=n_boot, seed=seed)
            grouped = trend_table(groups, name, n_boot=n_boot, seed=seed)
            trends += [per_layer.assign(ladder=name, group=per_layer["layer"].astype(str)),
                       grouped.assign(ladder=name, group=grouped["layer"].map(dict(enumerate(GROUPS))), layer=-1)]
            lad = groups[groups["split"].str.startswith(f"{name}@")]
            means.append(split_means(lad, n_boot=n_boot, seed=seed).assign(ladder=name))
        out["trends"] = pd.concat(trends, ignore_index=True)
        out["ladder_means"] = pd.concat(means, ignore_index=True).assign(
            group=lambda d: d["layer"].map(dict(enumerate(GROUPS))))
    return out


def accuracy_effects(prompts: pd.DataFrame, answers: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                     min_n: int = 3) -> pd.DataFrame:
    """Sparsity of the prompts the model answers wrongly vs those it answers right, within each difficulty level.

    Along a difficulty ladder the level and the model's accuracy move together; comparing wrong with right
    answers *at one level* asks whether sparsity tracks difficulty as the model experiences it, the level held
    fixed. Per task level with at least ``min_n`` right and ``min_n`` wrong answers: `effect_table` of the layer
    groups (early / middle / late, hoyer and near_zero_frac@0.1), column `wrong_minus_right`, Holm within the
    level; plus task, level, n_right, n_wrong. ``answers``: the run's `answers` table (split, prompt_id, correct).
    """
    rows = _metric_pairs(prompts, EFFECT_METRICS)
    correct = answers.set_index(["split", "prompt_id"])["correct"]
    rows = rows[rows.set_index(["split", "prompt_id"]).index.isin(correct.index)]
    out = []
    for split, level_rows in layer_groups(rows).groupby("split", sort=True):
        right = correct.loc[split].reindex(level_rows["prompt_id"]).to_numpy(dtype=bool)
        n_right = int(correct.loc[split].sum())
        n_wrong = int(len(correct.loc[split]) - n_right)
        if min(n_right, n_wrong) < min_n:
            continue
        table = effect_table(level_rows.assign(split=np.where(right, "right", "wrong")), "right", "wrong",
                             n_boot=n_boot, seed=seed)
        task, _, level = split.partition("@")
        out.append(table.assign(task=task, level=int(level), n_right=n_right, n_wrong=n_wrong,
                                group=table["layer"].map(dict(enumerate(GROUPS)))))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def effect_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per family, site and metric: layers tested, Holm-significant (up = OOD − ID > 0 / down), and the layer with
    the largest |g|."""
    effects = effects if "family" in effects.columns else effects.assign(family="all")
    counts = n_significant(effects, method="holm")
    keys = ["family", "site", "metric", "threshold"]
    top = effects.loc[effects["g"].abs().fillna(-1).groupby(
        [effects["family"], effects["site"], effects["metric"], effects["threshold"].fillna(-1)], sort=True).idxmax()]
    top = top[[*keys, "layer", "mean_a", "mean_b", DIFF, f"{DIFF}_lo", f"{DIFF}_hi",
               "g", "g_lo", "g_hi", "p_holm"]].rename(columns={"layer": "top_layer"})
    return counts.merge(top, on=keys, how="left")


def trend_summary(trends: pd.DataFrame) -> pd.DataFrame:
    """Per ladder, site and metric: layers with an increasing / decreasing trend, and rho [CI] per layer group."""
    trends = trends.assign(threshold=trends["threshold"].fillna(-1.0))  # NaN keys do not join
    per_layer = trends[trends["layer"] >= 0]
    keys = ["ladder", "site", "metric", "threshold"]
    counts = (per_layer.assign(n_layers=1, n_increasing=per_layer["direction"] == "increasing",
                               n_decreasing=per_layer["direction"] == "decreasing")
              .groupby(keys, dropna=False, sort=True)[["n_layers", "n_increasing", "n_decreasing"]].sum())
    grouped = trends[trends["layer"] < 0].assign(
        rho_ci=lambda d: [f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]" for r, lo, hi in zip(d["rho"], d["rho_lo"], d["rho_hi"])])
    wide = grouped.set_index([*keys, "group"])["rho_ci"].unstack("group")
    wide = wide[[g for g in GROUPS if g in wide.columns]].add_prefix("rho_")
    out = counts.join(wide).reset_index()
    return out.assign(threshold=out["threshold"].replace(-1.0, np.nan))

"""Show a run: the ID-vs-OOD summary for the terminal, plotly figures and one self-contained HTML page.

Reads only the tidy tables (design §3): `activations` and, when present, `neurons`; `statistics` adds the
prompt-level sections (ID vs OOD effects, ladder trends, OOD detector) from the `prompts` table.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich import box
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .store import RunDir, atomic_write_text

DEFAULT_SITES = ("mlp.hook_post", "hook_resid_post", "attn.hook_z")
ID, OOD = "id", "ood"
DIFF = "ood_minus_id"  # the one sign convention for differences, everywhere
FIRE_BINS = 50


def metric_rows(activations: pd.DataFrame, metric: str = "hoyer", threshold: float | None = None) -> pd.DataFrame:
    """Rows of one metric at one threshold; `metric` may name both, as in 'near_zero_frac@0.1'."""
    name, _, t = metric.partition("@")
    if t:
        try:
            threshold = float(t)
        except ValueError:
            raise UserError(f"threshold {t!r} in {metric!r} is not a number; write e.g. {name}@0.1") from None
    rows = activations[activations["metric"] == name]
    if rows.empty:
        have = ", ".join(activations["metric"].unique())
        raise UserError(f"metric '{name}' is not in this run (it has: {have}); pick one of those")
    if threshold is not None:
        rows = rows[np.isclose(rows["threshold"], threshold)]
    thresholds = activations.loc[activations["metric"] == name, "threshold"].drop_duplicates()
    if rows.empty or rows["threshold"].nunique(dropna=False) > 1:
        have = ", ".join(name if math.isnan(x) else f"{name}@{x:g}" for x in sorted(thresholds))
        raise UserError(f"pick one threshold for '{name}': {have}")
    return rows


def label(rows: pd.DataFrame) -> str:
    """'hoyer' or 'near_zero_frac@0.1' for rows of one metric."""
    name, t = rows["metric"].iloc[0], rows["threshold"].iloc[0]
    return name if math.isnan(t) else f"{name}@{t:g}"


def split_means(rows: pd.DataFrame) -> pd.DataFrame:
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
    means = split_means(rows[rows["site"].isin(keep)])
    wide = means.pivot(index=["site", "layer"], columns="split", values="value").reindex(columns=[ID, OOD])
    wide[DIFF] = wide[OOD] - wide[ID]
    out = wide.reset_index().rename_axis(columns=None)
    out = out.sort_values(["site", "layer"], key=lambda c: c.map(keep.index) if c.name == "site" else c,
                          ignore_index=True)
    return out[["site", "layer", ID, OOD, DIFF]]


def _layer_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary_table` output with one row per layer and (site, id|ood|ood_minus_id) columns, sites in order."""
    sites = list(dict.fromkeys(summary["site"]))
    wide = summary.pivot(index="layer", columns="site", values=[ID, OOD, DIFF]).swaplevel(axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([sites, [ID, OOD, DIFF]]))


def print_summary(summary: pd.DataFrame, console: Console | None = None, title: str = "") -> None:
    """Print `summary_table` output as one row per layer with ID, OOD and Δ columns per site."""
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    sites = list(dict.fromkeys(summary["site"]))
    for site in sites:  # short heads ('mlp.post') keep three sites within 80 columns
        short = site.replace("hook_", "")
        for head in (f"{short}\nID", "\nOOD", "\nOOD−ID"):
            table.add_column(head, justify="right", no_wrap=True)
    fmt = lambda x, sign="": "–" if pd.isna(x) else f"{x:{sign}.3f}"  # noqa: E731
    for layer, row in _layer_rows(summary).iterrows():
        table.add_row(str(layer), *(fmt(row[(site, col)], "+" if col == DIFF else "") for site in sites
                                    for col in (ID, OOD, DIFF)))
    (console or Console()).print(table)


# -- figures ---------------------------------------------------------------------------------------------------
def _split_order(means: pd.DataFrame) -> list[str]:
    order = means[["split", "level"]].drop_duplicates()
    order = order.assign(clean=~order["split"].isin([ID, OOD]), ladder=order["split"].str.partition("@")[0])
    return list(order.sort_values(["clean", "ladder", "level"], kind="stable")["split"])


def heatmap(means: pd.DataFrame, name: str) -> go.Figure:
    """Layer × site heatmap of one metric, one trace per split, picked with a dropdown (shared colour scale)."""
    splits, sites = _split_order(means), list(dict.fromkeys(means["site"]))
    fig = go.Figure()
    for i, split in enumerate(splits):
        grid = means[means["split"] == split].pivot(index="site", columns="layer", values="value").reindex(sites)
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=sites, name=split, coloraxis="coloraxis",
                                 visible=i == 0, hovertemplate="layer %{x}<br>%{y}<br>%{z:.4f}<extra></extra>"))
    buttons = [dict(label=split, method="update", args=[{"visible": [s == split for s in splits]}])
               for split in splits]
    fig.update_layout(title=f"{name} by layer and site", xaxis_title="layer", coloraxis=dict(colorscale="Viridis"),
                      updatemenus=[dict(buttons=buttons, x=1.0, y=1.15, xanchor="right", showactive=True)])
    return fig


def difference(summary: pd.DataFrame, name: str) -> go.Figure:
    """OOD − ID per layer, one line per site."""
    fig = go.Figure()
    for site, rows in summary.groupby("site", sort=False):
        fig.add_trace(go.Scatter(x=rows["layer"], y=rows[DIFF], name=site, mode="lines+markers"))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(title=f"OOD − ID {name} per layer", xaxis_title="layer", yaxis_title=f"OOD − ID {name}")
    return fig


def harvest_view(means: pd.DataFrame, name: str) -> go.Figure:
    """Where to harvest: one panel per site, the metric per layer on ID and OOD text (sparse on both = safe)."""
    rows = means[means["split"].isin([ID, OOD])]
    fig = px.line(rows, x="layer", y="value", color="split", facet_col="site", facet_col_wrap=3, markers=True,
                  category_orders={"split": [ID, OOD], "site": list(dict.fromkeys(rows["site"]))})
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("site=")))
    fig.update_layout(title=f"Where to harvest: {name} per layer and site, ID vs OOD")
    return fig


def ladder(means: pd.DataFrame, name: str) -> go.Figure:
    """The metric against corruption level (mean over layers), one panel per ladder, one line per site."""
    rows = means[~means["split"].isin([ID, OOD])]
    rows = (rows.assign(ladder=rows["split"].str.partition("@")[0])
            .groupby(["ladder", "level", "site"], as_index=False, sort=False)["value"].mean())
    fig = px.line(rows.sort_values("level", kind="stable"), x="level", y="value", color="site", facet_col="ladder",
                  markers=True)
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("ladder=")))
    fig.update_layout(title=f"{name} against corruption level (mean over layers)")
    fig.update_xaxes(title="corruption level (%)")
    return fig


def fire_freq_histogram(neurons: pd.DataFrame, site: str = "mlp.hook_post") -> go.Figure:
    """Distribution of per-neuron firing frequency at one site over all layers and suites, ID vs OOD, log count."""
    rows = neurons[(neurons["metric"] == "fire_freq") & neurons["split"].isin([ID, OOD])]
    sites = list(dict.fromkeys(rows["site"]))
    if site not in sites:
        site = sites[0]
    fig = go.Figure()
    edges = np.linspace(0, 1, FIRE_BINS + 1)
    for split in (ID, OOD):
        values = rows.loc[(rows["site"] == site) & (rows["split"] == split), "value"]
        if len(values):  # binned here: a 30-layer model has ~10^5 neuron rows, too many to ship to the browser
            counts, _ = np.histogram(values, bins=edges)
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts / len(values), width=1 / FIRE_BINS,
                                 name=split, opacity=0.6))
    fig.update_layout(title=f"Per-neuron firing frequency at {site}", barmode="overlay", yaxis_type="log",
                      xaxis_title="share of tokens where |x_i| > 0.1·RMS", yaxis_title="share of neurons (× suites)")
    return fig


def figures(tables: dict[str, pd.DataFrame], metric: str = "hoyer", threshold: float | None = None,
            site: str = "mlp.hook_post") -> dict[str, go.Figure]:
    """All report figures for one run; figures that need missing data (no OOD, no ladder, no neurons) are left out."""
    rows = metric_rows(tables["activations"], metric, threshold)
    name, means = label(rows), split_means(rows)
    figs = {"heatmap": heatmap(means, name)}
    splits = set(means["split"])
    if {ID, OOD} <= splits:
        figs["difference"] = difference(summary_table(rows, name, sites=None), name)
    if splits & {ID, OOD}:
        figs["harvest"] = harvest_view(means, name)
    if splits - {ID, OOD}:
        figs["ladder"] = ladder(means, name)
    neurons = tables.get("neurons")
    if neurons is not None and ((neurons["metric"] == "fire_freq") & neurons["split"].isin([ID, OOD])).any():
        figs["fire_freq"] = fire_freq_histogram(neurons, site)
    return figs


# -- HTML ------------------------------------------------------------------------------------------------------
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{padding:2px 8px;text-align:right}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def _summary_html(activations: pd.DataFrame, metric: str, threshold: float | None) -> str:
    """The ID/OOD summary as an HTML table (layers × site/ID/OOD/OOD−ID), or '' for a run without ID/OOD splits."""
    rows = metric_rows(activations, metric, threshold)
    if not rows["split"].isin([ID, OOD]).any():
        return ""
    present = set(rows["site"])
    summary = summary_table(rows, label(rows), sites=[s for s in DEFAULT_SITES if s in present] or None)
    return (f"<h2>ID vs OOD {html.escape(label(rows))} (ood_minus_id = OOD − ID)</h2>\n"
            + _layer_rows(summary).to_html(float_format=lambda x: f"{x:.4f}", na_rep="–"))


def write_html(run_dir: RunDir, tables: dict[str, pd.DataFrame] | None = None, path: Path | str | None = None,
               metric: str = "hoyer", threshold: float | None = None,
               stats: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write one self-contained HTML report (plotly.js inlined once) into the run folder or to `path`, atomically.

    `tables` defaults to the run's own `activations` and `neurons`; `stats` (from `statistics`) adds its sections.
    """
    m = run_dir.manifest
    if tables is None:
        tables = {t: run_dir.read(t) for t in ("activations", "neurons") if t in m.get("tables", {})}
    facts = [("model", m.get("model")), ("revision", m.get("model_revision")), ("weights", m.get("weights_note")),
             ("suites", ", ".join(map(str, m.get("suites") or []))), ("created", m.get("created")),
             ("sparsescope", m.get("package_version"))]
    body = ["<ul>" + "".join(f"<li><b>{k}</b>: {html.escape(str(v))}</li>" for k, v in facts if v) + "</ul>",
            _summary_html(tables["activations"], metric, threshold)]
    for i, fig in enumerate(figures(tables, metric, threshold).values()):
        body += [f"<h2>{html.escape(fig.layout.title.text)}</h2>",
                 fig.to_html(full_html=False, include_plotlyjs=i == 0)]
    body += stats_html(stats or {})
    body += ["<h2>Run configuration</h2>",
             f"<pre>{html.escape(json.dumps(m.get('config', {}), indent=2, default=str))}</pre>"]
    title = f"sparsescope report — {m.get('model') or 'model'} ({run_dir.run_id})"
    page = PAGE.format(title=html.escape(title), body="\n".join(body))
    if path is None:
        return run_dir.write_file("report.html", page)
    return atomic_write_text(path, page)


# -- statistics over prompts (ID vs OOD effects, ladder trends, OOD detector) ------------------------------------
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
    from .ood import baseline_scores, leave_family_out, profiles
    from .stats import effect_table, ladders, split_means, trend_table

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


def effect_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per family, site and metric: layers tested, Holm-significant (up = OOD − ID > 0 / down), and the layer with
    the largest |g|."""
    from .stats import n_significant

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


def ladder_bands(means: pd.DataFrame, metric: str = "hoyer") -> go.Figure:
    """One metric against corruption level with its CI band: rows = layer groups, columns = ladders, line = site."""
    rows = means[means["metric"] == metric]
    ladders_, groups = list(dict.fromkeys(rows["ladder"])), [g for g in GROUPS if g in set(rows["group"])]
    fig = make_subplots(rows=len(groups), cols=len(ladders_), shared_xaxes=True, shared_yaxes=True,
                        column_titles=ladders_, row_titles=groups)
    colors = dict(zip(dict.fromkeys(rows["site"]), px.colors.qualitative.Plotly))
    for (ladder_, group, site), r in rows.groupby(["ladder", "group", "site"], sort=False):
        r = r.sort_values("level")
        at = {"row": groups.index(group) + 1, "col": ladders_.index(ladder_) + 1}
        x = list(r["level"]) + list(r["level"])[::-1]
        fig.add_trace(go.Scatter(x=x, y=list(r["hi"]) + list(r["lo"])[::-1], fill="toself", line={"width": 0},
                                 fillcolor=colors[site], opacity=0.2, showlegend=False, hoverinfo="skip"), **at)
        fig.add_trace(go.Scatter(x=r["level"], y=r["mean"], mode="lines+markers", name=site, legendgroup=site,
                                 line={"color": colors[site]}, showlegend=at == {"row": 1, "col": 1}), **at)
    fig.update_layout(title=f"{metric} against corruption level (%), mean over each layer group, 95% bootstrap CI",
                      height=250 * len(groups) + 100)
    return fig


def _fmt(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–")


def stats_html(stats: dict[str, pd.DataFrame]) -> list[str]:
    """HTML sections for the statistic tables of `statistics`."""
    from .ood import roc_figure, versus_baseline

    body = []
    if "effects" in stats:
        body += ["<h2>ID vs OOD effects per layer (ood_minus_id = OOD − ID of per-prompt means; Wald test with a "
                 "bootstrap SE over source texts, Holm within each family; Hedges' g)</h2>",
                 _fmt(effect_summary(stats["effects"]))]
    if "trends" in stats:
        body += ["<h2>Trend along corruption ladders (Spearman rho of value vs level, 95% CI)</h2>",
                 _fmt(trend_summary(stats["trends"]))]
        for metric in dict.fromkeys(stats["ladder_means"]["metric"]):
            body.append(ladder_bands(stats["ladder_means"], metric).to_html(full_html=False, include_plotlyjs=False))
    if "detector" in stats:
        det = stats["detector"]
        body += ["<h2>OOD detector, leave one OOD family out: profile vs best baseline (AUROC, paired 95% CI)</h2>",
                 _fmt(versus_baseline(det)), "<h3>Every method</h3>",
                 _fmt(det[["family", "method", "auroc", "lo", "hi", "n_id", "n_ood"]]),
                 roc_figure(det).to_html(full_html=False, include_plotlyjs=False)]
    return body


TERMINAL_SITES = ("mlp.hook_pre", *DEFAULT_SITES)


def print_stats(stats: dict[str, pd.DataFrame], console: Console) -> None:
    """A short terminal summary of `statistics` (sites of TERMINAL_SITES; the HTML report shows all)."""
    if "effects" in stats:
        s = effect_summary(stats["effects"])
        s = s[s["site"].isin(TERMINAL_SITES) & (s["family"] == "all")]
        console.print("[bold]ID vs OOD, all OOD suites pooled, Holm-significant layers[/] (site, metric: "
                      "significant/tested, up = OOD − ID > 0, down; largest g [CI] at layer)")
        for r in s.itertuples(index=False):
            name = r.metric + ("" if pd.isna(r.threshold) else f"@{r.threshold:g}")
            console.print(f"  {r.site:22} {name:20} {r.n_significant:3}/{r.n_tests:<3} up {r.n_up:3} down {r.n_down:3}"
                          f"  g {r.g:+.2f} [{r.g_lo:+.2f}, {r.g_hi:+.2f}] @ L{r.top_layer}", highlight=False, soft_wrap=True)
    if "trends" in stats:
        console.print("[bold]Ladder trends[/] (layers increasing/decreasing of tested; rho [CI] per layer group)")
        s = trend_summary(stats["trends"])
        for r in s[s["site"].isin(TERMINAL_SITES)].itertuples(index=False):
            d = r._asdict()
            name = r.metric + ("" if pd.isna(r.threshold) else f"@{r.threshold:g}")
            rhos = "  ".join(f"{g} {d[f'rho_{g}']}" for g in GROUPS if f"rho_{g}" in d)
            console.print(f"  {r.ladder:10} {r.site:18} {name:20} {r.n_increasing:2}/{r.n_decreasing:<2} of "
                          f"{r.n_layers:<2} {rhos}", highlight=False, soft_wrap=True)
    if "detector" in stats:
        from .ood import versus_baseline

        console.print("[bold]OOD detector[/] (AUROC \\[CI] on the held-out family: sparsity profile, best baseline, "
                      "profile − best \\[paired CI])")
        for r in versus_baseline(stats["detector"]).itertuples():
            best = "" if not isinstance(r.best_baseline, str) else (
                f"  {r.best_baseline} {r.baseline:.2f} [{r.baseline_lo:.2f}, {r.baseline_hi:.2f}]"
                f"  {r.profile_minus_best:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]")
            console.print(f"  {r.family:16} profile {r.profile:.2f} [{r.profile_lo:.2f}, {r.profile_hi:.2f}]{best}",
                          highlight=False, soft_wrap=True)

"""A scan's figures and its self-contained HTML report (the terminal summary is in `show.terminal`).

Reads only the tidy tables (design §3): `activations` and, when present, `neurons`; `statistics` adds the
prompt-level sections (ID vs OOD effects, ladder trends, OOD detector) from the `prompts` table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sparsescope.harvest.summary import (
    DEFAULT_SITES, DIFF, GROUPS, ID, OOD, effect_summary, layer_rows, metric_label, metric_rows, pooled_means,
    summary_table, trend_summary,
)
from sparsescope.ood import versus_baseline
from sparsescope.show.page import PAGE
from sparsescope.store import RunDir, atomic_write_text

FIRE_BINS = 50


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
    name, means = metric_label(rows), pooled_means(rows)
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


def _summary_html(activations: pd.DataFrame, metric: str, threshold: float | None) -> str:
    """The ID/OOD summary as an HTML table (layers × site/ID/OOD/OOD−ID), or '' for a run without ID/OOD splits."""
    rows = metric_rows(activations, metric, threshold)
    if not rows["split"].isin([ID, OOD]).any():
        return ""
    present = set(rows["site"])
    summary = summary_table(rows, metric_label(rows), sites=[s for s in DEFAULT_SITES if s in present] or None)
    return (f"<h2>ID vs OOD {html.escape(metric_label(rows))} (ood_minus_id = OOD − ID)</h2>\n"
            + layer_rows(summary).to_html(float_format=lambda x: f"{x:.4f}", na_rep="–"))


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


def roc_figure(results: pd.DataFrame, roc: pd.DataFrame | None = None) -> go.Figure:
    """ROC curves of `leave_family_out` results: one panel per held-out family, AUROC [CI] in the legend.

    `roc`: the points as the run store keeps them (`ood.roc_table`: family, method, point, fpr, tpr), for a stored
    `detector` table, which has no fpr/tpr arrays."""
    if roc is not None:
        curves = {k: g.sort_values("point") for k, g in roc.groupby(["family", "method"], sort=False)}
        keys = list(zip(results["family"], results["method"]))
        results = results.assign(fpr=[curves[k]["fpr"].to_numpy() for k in keys],
                                 tpr=[curves[k]["tpr"].to_numpy() for k in keys])
    families = list(dict.fromkeys(results["family"]))
    titles = [f"held out: {f}" for f in families]
    fig = make_subplots(rows=1, cols=len(families), subplot_titles=titles, shared_yaxes=True)
    colors = dict(zip(dict.fromkeys(results["method"]), ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")))
    for r in results.itertuples(index=False):
        col = families.index(r.family) + 1
        name = f"{r.family} · {r.method} {r.auroc:.2f} [{r.lo:.2f}, {r.hi:.2f}]"
        line = {"color": colors.get(r.method)}
        fig.add_trace(go.Scatter(x=r.fpr, y=r.tpr, name=name, mode="lines", line=line), 1, col)
        if r.method == results["method"].iloc[0]:
            chance = {"dash": "dot", "color": "gray"}
            fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=chance, showlegend=False), 1, col)
        fig.update_xaxes(title_text="false positive rate", row=1, col=col)
    fig.update_yaxes(title_text="true positive rate", row=1, col=1)
    return fig

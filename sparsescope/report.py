"""Show a run: the ID-vs-OOD summary for the terminal, plotly figures and one self-contained HTML page.

Reads only the tidy tables (design §3): `activations` and, when present, `neurons`.
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
from rich import box
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .store import RunDir, atomic_write_text

DEFAULT_SITES = ("mlp.hook_post", "hook_resid_post", "attn.hook_z")
ID, OOD = "id", "ood"
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
    """Per site and layer: ID mean, OOD mean and `diff` = ID − OOD of one metric (ladder splits are left out).

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
    wide["diff"] = wide[ID] - wide[OOD]
    out = wide.reset_index().rename_axis(columns=None)
    out = out.sort_values(["site", "layer"], key=lambda c: c.map(keep.index) if c.name == "site" else c,
                          ignore_index=True)
    return out[["site", "layer", ID, OOD, "diff"]]


def _layer_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary_table` output with one row per layer and (site, id|ood|diff) columns, sites in their order."""
    sites = list(dict.fromkeys(summary["site"]))
    wide = summary.pivot(index="layer", columns="site", values=[ID, OOD, "diff"]).swaplevel(axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([sites, [ID, OOD, "diff"]]))


def print_summary(summary: pd.DataFrame, console: Console | None = None, title: str = "") -> None:
    """Print `summary_table` output as one row per layer with ID, OOD and Δ columns per site."""
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    sites = list(dict.fromkeys(summary["site"]))
    for site in sites:  # short heads ('mlp.post') keep three sites within 80 columns
        short = site.replace("hook_", "")
        for head in (f"{short}\nID", "\nOOD", "\nΔ"):
            table.add_column(head, justify="right", no_wrap=True)
    fmt = lambda x, sign="": "–" if pd.isna(x) else f"{x:{sign}.3f}"  # noqa: E731
    for layer, row in _layer_rows(summary).iterrows():
        table.add_row(str(layer), *(fmt(row[(site, col)], "+" if col == "diff" else "") for site in sites
                                    for col in (ID, OOD, "diff")))
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
    """ID − OOD per layer, one line per site."""
    fig = go.Figure()
    for site, rows in summary.groupby("site", sort=False):
        fig.add_trace(go.Scatter(x=rows["layer"], y=rows["diff"], name=site, mode="lines+markers"))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(title=f"ID − OOD {name} per layer", xaxis_title="layer", yaxis_title=f"Δ {name}")
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
    """The ID/OOD summary as an HTML table (layers × site/ID/OOD/diff), or '' for a run without ID/OOD splits."""
    rows = metric_rows(activations, metric, threshold)
    if not rows["split"].isin([ID, OOD]).any():
        return ""
    present = set(rows["site"])
    summary = summary_table(rows, label(rows), sites=[s for s in DEFAULT_SITES if s in present] or None)
    return (f"<h2>ID vs OOD {html.escape(label(rows))} (diff = ID − OOD)</h2>\n"
            + _layer_rows(summary).to_html(float_format=lambda x: f"{x:.4f}", na_rep="–"))


def write_html(run_dir: RunDir, tables: dict[str, pd.DataFrame] | None = None, path: Path | str | None = None,
               metric: str = "hoyer", threshold: float | None = None) -> Path:
    """Write one self-contained HTML report (plotly.js inlined once) into the run folder or to `path`, atomically.

    `tables` defaults to the run's own `activations` and `neurons`.
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
    body += ["<h2>Run configuration</h2>",
             f"<pre>{html.escape(json.dumps(m.get('config', {}), indent=2, default=str))}</pre>"]
    title = f"sparsescope report — {m.get('model') or 'model'} ({run_dir.run_id})"
    page = PAGE.format(title=html.escape(title), body="\n".join(body))
    if path is None:
        return run_dir.write_file("report.html", page)
    return atomic_write_text(path, page)

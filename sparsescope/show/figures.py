"""Plotly figures of stored tables that the HTML report does not already draw (the report's own figures,
`show.report.heatmap`, `fire_freq_histogram`, `ladder_bands`, and `show.compare.pareto_figure`, are
reused as they are). Each takes tidy rows as stored by the run store and returns a `go.Figure`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from sparsescope.harvest.summary import DIFF

COLORS = px.colors.qualitative.Plotly


def _band(fig: go.Figure, x, lo, hi, color: str, group: str) -> None:
    x = list(x)
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(hi) + list(lo)[::-1], fill="toself", line={"width": 0},
                             fillcolor=color, opacity=0.2, showlegend=False, hoverinfo="skip", legendgroup=group))


def ood_minus_id(effects: pd.DataFrame, title: str) -> go.Figure:
    """OOD − ID per layer with its 95 % cluster-bootstrap CI band, one line per site (the pooled family "all")."""
    if "family" in effects.columns:
        effects = effects[effects["family"] == "all"]
    fig = go.Figure()
    for i, (site, r) in enumerate(effects.sort_values("layer").groupby("site", sort=False)):
        color = COLORS[i % len(COLORS)]
        _band(fig, r["layer"], r[f"{DIFF}_lo"], r[f"{DIFF}_hi"], color, site)
        fig.add_trace(go.Scatter(x=r["layer"], y=r[DIFF], mode="lines+markers", name=site, legendgroup=site,
                                 line={"color": color},
                                 customdata=np.stack([r[f"{DIFF}_lo"], r[f"{DIFF}_hi"], r["p_holm"]], axis=1),
                                 hovertemplate="layer %{x}: %{y:+.4f} [%{customdata[0]:+.4f}, %{customdata[1]:+.4f}]"
                                               "<br>p (Holm) %{customdata[2]:.3g}<extra>" + site + "</extra>"))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="OOD − ID")
    return fig


def family_effects(means: pd.DataFrame, title: str) -> go.Figure:
    """Per OOD family (suite): its mean minus the pooled ID mean, per layer (one line per family).

    `means`: suite, split, layer, value (token-weighted) of one metric at one site."""
    ids = means[means["split"] == "id"]
    w = ids["n_tokens"] * ids["value"]
    id_mean = (w.groupby(ids["layer"]).sum() / ids["n_tokens"].groupby(ids["layer"]).sum()).rename("id")
    fig = go.Figure()
    for suite, r in means[means["split"] == "ood"].groupby("suite", sort=True):
        r = r.sort_values("layer")
        fig.add_trace(go.Scatter(x=r["layer"], y=r["value"].to_numpy() - r["layer"].map(id_mean).to_numpy(),
                                 mode="lines+markers", name=suite))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="family − ID")
    return fig


def auroc_bars(detector: pd.DataFrame) -> go.Figure:
    """OOD detector AUROC with 95 % CI per held-out family, the sparsity profile beside its baselines."""
    fig = go.Figure()
    for i, (method, r) in enumerate(detector.groupby("method", sort=False)):
        fig.add_trace(go.Bar(x=r["family"], y=r["auroc"], name=method, marker_color=COLORS[i % len(COLORS)],
                             error_y={"type": "data", "symmetric": False, "array": r["hi"] - r["auroc"],
                                      "arrayminus": r["auroc"] - r["lo"]}))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(title="OOD detector, leave one OOD family out: AUROC [95 % CI]", barmode="group",
                      yaxis={"range": [0, 1.05], "title": "AUROC"}, xaxis_title="held-out family")
    return fig


def sweep_figure(sweep: pd.DataFrame) -> go.Figure:
    """Spike sparsity, silent share and Δppl against the swept parameter (one line per run)."""
    from plotly.subplots import make_subplots

    metrics = [m for m in ("spike_sparsity", "zero_frac", "delta_ppl") if m in set(sweep["metric"])]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics)
    for i, (run, r) in enumerate(sweep.groupby("run_id", sort=False)):
        for col, m in enumerate(metrics, 1):
            rr = r[r["metric"] == m].sort_values("setting")
            fig.add_trace(go.Scatter(x=rr["setting"], y=rr["value"], mode="lines+markers", name=run,
                                     legendgroup=run, showlegend=col == 1, line={"color": COLORS[i % len(COLORS)]}),
                          1, col)
            fig.update_xaxes(title_text=str(r["param"].iloc[0]), row=1, col=col)
    fig.update_layout(title="Spiking sweep", height=380)
    return fig


def layer_site_heatmap(rows: pd.DataFrame, title: str, value: str = "value", site: str = "site") -> go.Figure:
    """Layer × site heatmap of one value column."""
    grid = rows.pivot_table(index=site, columns="layer", values=value, aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), colorscale="Viridis",
                               hovertemplate="layer %{x}<br>%{y}<br>%{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="layer")
    return fig


def harvest_bars(table: pd.DataFrame, chosen: pd.DataFrame | None = None) -> go.Figure:
    """µJ per token each lever would save, per layer (summed over its linears); chosen options starred."""
    per = table.groupby("layer")[["spike_uJ_saved", "act_uJ_saved", "int8_uJ_saved"]].sum(min_count=1)
    names = {"spike_uJ_saved": "spike conversion", "act_uJ_saved": "activation sparsity (recorded)",
             "int8_uJ_saved": "int8 weights"}
    fig = go.Figure()
    for i, (col, name) in enumerate(names.items()):
        if per[col].notna().any():
            fig.add_trace(go.Bar(x=per.index, y=per[col], name=name, marker_color=COLORS[i]))
    if chosen is not None and len(chosen):
        top = per.max(axis=1)
        fig.add_trace(go.Scatter(x=chosen["layer"], y=chosen["layer"].map(top) * 1.08, mode="markers+text",
                                 text=chosen["choice"], textposition="top center", name="recommended",
                                 marker={"symbol": "star", "size": 12, "color": "black"}))
    fig.update_layout(title="Energy saved per token by lever and layer (cost model, block linears)",
                      barmode="group", xaxis_title="layer", yaxis_title="µJ saved per token")
    return fig


def dead_dense(activations: pd.DataFrame) -> go.Figure:
    """Share of dead (never fire) and dense (fire on > 50 % of tokens) neurons per layer, one line per split (dashed
    by site when there are several: pass one site's rows to keep the chart light)."""
    keep = activations["metric"].isin(["dead_frac", "dense_frac"]) & activations["split"].isin(["id", "ood"])
    rows = activations[keep]
    w = rows.assign(wv=rows["value"] * rows["n_tokens"])
    g = w.groupby(["metric", "site", "split", "layer"], as_index=False)[["wv", "n_tokens"]].sum()
    g["value"] = g["wv"] / g["n_tokens"]
    sites = list(dict.fromkeys(g["site"]))
    fig = px.line(g, x="layer", y="value", color="split", line_dash="site" if len(sites) > 1 else None,
                  facet_col="metric", markers=True)
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("metric=")))
    fig.update_layout(title="Dead and dense neurons per layer" + (f" at {sites[0]}" if len(sites) == 1 else ""))
    return fig


# -- SAE and circuits (tables per the cross-helper contracts) --------------------------------------------------------
def sae_quality(metrics: pd.DataFrame) -> go.Figure:
    """Sparsity (L0) against explained variance per trained SAE, one colour per site."""
    fig = px.scatter(metrics, x="l0", y="explained_variance", color="site",
                     symbol="split" if "split" in metrics else None,
                     hover_data=[c for c in ("architecture", "d_sae", "k", "ce_loss_recovered", "dead_frac")
                                 if c in metrics])
    fig.update_layout(title="SAE quality: L0 vs explained variance", xaxis_title="L0 (active features per token)")
    return fig


def feature_density(features: pd.DataFrame) -> go.Figure:
    """Histogram of log10 feature density per split (how often features fire)."""
    f = features.assign(log_density=np.log10(features["density"].clip(lower=1e-7)))
    fig = px.histogram(f, x="log_density", color="split" if "split" in f else None, barmode="overlay", nbins=60)
    fig.update_layout(title="Feature density (log10 share of tokens a feature fires on)", yaxis_title="features")
    return fig


def logit_effects(logits: pd.DataFrame) -> go.Figure:
    """A feature's top promoted (+) and suppressed (−) tokens."""
    r = logits.sort_values("effect")
    fig = go.Figure(go.Bar(x=r["effect"], y=r["token"].astype(str).map(repr), orientation="h",
                           marker_color=np.where(r["effect"] >= 0, "#2166ac", "#b2182b")))
    fig.update_layout(title="Logit effect of the feature", xaxis_title="effect on logit", height=400)
    return fig


def effect_heatmap(effects: pd.DataFrame, title: str) -> go.Figure:
    """Component effects as a layer × index heatmap, signed diverging colours (blue helps, red hurts)."""
    grid = effects.pivot_table(index="index", columns="layer", values="effect", aggfunc="mean")
    m = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.size else 1.0
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), colorscale="RdBu",
                               zmin=-m, zmax=m, hovertemplate="layer %{x}, #%{y}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="index")
    return fig


def faithfulness_curves(faith: pd.DataFrame) -> go.Figure:
    """Faithfulness against circuit size per task and method."""
    fig = px.line(faith.sort_values("size_frac"), x="size_frac", y="faithfulness", color="method", facet_col="task",
                  markers=True)
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("task=")))
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_layout(title="Faithfulness vs circuit size (share of components kept)")
    return fig


def overlap_heatmap(overlap: pd.DataFrame) -> go.Figure:
    """Jaccard overlap of circuits between tasks (mean over layers)."""
    g = overlap.groupby(["task_a", "task_b"])["jaccard"].mean().unstack()
    fig = go.Figure(go.Heatmap(z=g.to_numpy(), x=list(g.columns), y=list(g.index), colorscale="Blues", zmin=0, zmax=1))
    fig.update_layout(title="Circuit overlap between tasks (Jaccard)")
    return fig

"""Figures and the HTML page of a ``circuits`` run: faithfulness curves and the component × task effect heatmap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from sparsescope.circuits.study import component_name
from sparsescope.show.page import html_page
from sparsescope.show.terminal import frame_table

def effect_heatmap(effects: pd.DataFrame, method: str = "eap_ig", top: int = 40) -> go.Figure:
    """Components (the ``top`` with the largest |effect| in any task) × tasks, coloured by effect."""
    e = effects[(effects["method"] == method) & (effects["variant"] == "dense")].copy()
    e["component"] = [component_name(r.layer, r.kind, r.index) for r in e.itertuples()]
    grid = e.pivot_table(index="component", columns="task", values="effect")
    keep = grid.abs().max(axis=1).sort_values(ascending=False).index[:top]
    return px.imshow(grid.loc[keep], aspect="auto", color_continuous_scale="RdBu", color_continuous_midpoint=0,
                     title=f"{method} effect of patching each component (top {top} by |effect|)",
                     labels={"color": "Δ metric"})


def faithfulness_figure(curves: pd.DataFrame) -> go.Figure:
    """Held-out faithfulness against circuit size per task and method, random circuits as a mean line."""
    test = curves[curves["split"] == "test"]
    mean = test.groupby(["task", "variant", "method", "size_pct"], as_index=False)["faithfulness"].mean()
    mean["line"] = mean["method"] + np.where(mean["variant"] == "dense", "", " (" + mean["variant"] + ")")
    fig = px.line(mean, x="size_pct", y="faithfulness", color="line", facet_col="task", facet_col_wrap=3,
                  log_x=True, markers=True, title="Faithfulness on held-out prompts (random: mean of seeds)",
                  labels={"size_pct": "circuit size (% of nodes)"})
    fig.add_hline(y=1, line_dash="dot")
    return fig


def circuits_page(manifest: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The run's page: curves and heatmap when discovery ran, then the tables that summarise it."""
    parts: list = []
    if "faithfulness" in tables:
        parts.append(faithfulness_figure(tables["faithfulness"]))
    if "effects" in tables:
        methods = list(tables["effects"]["method"].unique())
        parts.append(effect_heatmap(tables["effects"], "eap_ig" if "eap_ig" in methods else methods[0]))
    for name in ("tasks", "scores", "validation", "overlap", "firing"):
        if name in tables:
            parts += [name, tables[name]]
    facts = {"model": manifest.get("model"), "revision": manifest.get("model_revision"),
             "weights": manifest.get("weights_note"), "created": manifest.get("created")}
    return html_page(f"sparsescope circuits — {manifest.get('model')} ({manifest.get('run_id')})", facts, parts)


def score_tables(tables: dict[str, pd.DataFrame]) -> list:
    """Terminal tables of a discovery or compare run: held-out scores, attribution vs exact, overlap, firing."""
    cols = ["task", "variant", "level", "method", "cpr", "cmd", "random_cpr", "random_cmd", "necessity",
            "sufficiency", "n_components", "seconds"]
    out = [frame_table(tables["scores"][cols].set_index(["task", "method"]),
                       "held-out scores (MIB; random: mean of seeds)")]
    if "validation" in tables:
        out.append(frame_table(tables["validation"].set_index(["task", "method"]), "attribution vs exact patching"))
    if "overlap" in tables:
        overall = tables["overlap"][tables["overlap"]["layer"] == -1].drop(columns=["layer"])
        out.append(frame_table(overall.set_index(["task_a", "task_b"]), "circuit overlap (Jaccard, all layers)"))
    if "firing" in tables and len(tables["firing"]):
        out.append(frame_table(tables["firing"].set_index(["task", "group"]),
                               "firing frequency: circuit neurons vs the rest"))
    return out

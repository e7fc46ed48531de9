"""The `weights` run's figures and HTML page: weight-statistic heatmap, pruning curves, essential-sparsity knees."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from sparsescope.show.page import html_page
from sparsescope.weights import sensitivity as sens
from sparsescope.weights.study import grid


def sensitivity_figure(table: pd.DataFrame, knee_table: pd.DataFrame, tolerance: float = 0.01) -> go.Figure:
    """Whole-model perplexity against sparsity per method (log y), N:M points as markers, the tolerance and knees."""
    whole = table[table["layer"] == sens.ALL_LAYERS]
    curves = whole[~whole["config"].str.contains(":")]
    fig = px.line(curves, x="sparsity", y="ppl", color="method", markers=True, log_y=True,
                  labels={"sparsity": "weight sparsity", "ppl": "perplexity"},
                  title="Pruning sensitivity (whole model)")
    for row in whole[whole["config"].str.contains(":")].itertuples():
        fig.add_scatter(x=[row.sparsity], y=[row.ppl], mode="markers", marker_symbol="x",
                        marker_size=12, name=f"{row.method} {row.config}")
    dense = float((whole["ppl"] - whole["delta_ppl"]).iloc[0])
    fig.add_hline(y=dense * (1 + tolerance), line_dash="dash", annotation_text=f"dense ppl + {tolerance:.0%}")
    for row in knee_table[knee_table["layer"] == sens.ALL_LAYERS].itertuples():
        fig.add_vline(x=row.essential_sparsity, line_dash="dot",
                      annotation_text=f"{row.method} knee {row.essential_sparsity:.2f}")
    return fig


def layer_sensitivity_figure(table: pd.DataFrame) -> go.Figure:
    """Per-layer heatmap of Δppl/ppl (layers × sparsity) for the first method, when per-layer rows exist."""
    rows = table[(table["layer"] != sens.ALL_LAYERS) & ~table["config"].str.contains(":")]
    method = rows["method"].iloc[0]
    wide = rows[rows["method"] == method].pivot(index="layer", columns="sparsity", values="rel_delta_ppl")
    return px.imshow(wide, aspect="auto", color_continuous_scale="Viridis",
                     labels={"color": "Δppl / ppl", "x": "sparsity", "y": "layer"},
                     title=f"Per-layer sensitivity ({method}, one layer pruned at a time)")


def weights_page(manifest: dict, tables: dict[str, pd.DataFrame], metric: str, tolerance: float) -> str:
    """The run's HTML page: weight-statistic heatmap and grid, then sensitivity curves, knees and rows if measured."""
    g = grid(tables["weights"], metric)
    heat = px.imshow(g, aspect="auto", color_continuous_scale="Viridis", labels={"color": metric},
                     title=f"{metric} per layer and weight site")
    facts = {"model": manifest.get("model"), "revision": manifest.get("model_revision"),
             "weights": manifest.get("weights_note"), "created": manifest.get("created")}
    parts: list = [heat, f"{metric} (layers × weight sites)", g.reset_index()]
    if "sensitivity" in tables:
        s, k = tables["sensitivity"], tables["knees"]
        parts += [sensitivity_figure(s, k, tolerance)]
        if (s["layer"] != sens.ALL_LAYERS).any():
            parts += [layer_sensitivity_figure(s)]
        parts += [f"Essential sparsity: largest sparsity with Δppl/ppl ≤ {tolerance:.1%} (linear between points)", k,
                  "Sensitivity measurements", s]
    return html_page(f"sparsescope weights — {manifest.get('model')} ({manifest.get('run_id')})", facts, parts)

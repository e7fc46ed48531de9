"""The `compare` run's Pareto figure and HTML page."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sparsescope.harvest.compare import pareto_front
from sparsescope.show.page import html_page


def pareto_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Perplexity against energy and against bytes per token (log x), Pareto fronts as lines."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("quality vs energy", "quality vs memory traffic"))
    colors = dict(zip(dict.fromkeys(table["method"]), [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
        "#17becf"] * 3))
    for col, x in ((1, "energy_uJ_per_token"), (2, "bytes_per_token")):
        for method, g in table.groupby("method", sort=False):
            fig.add_scatter(x=g[x], y=g["ppl"], mode="markers", name=method, legendgroup=method,
                            showlegend=col == 1, marker={"color": colors[method], "size": 9},
                            text=g["config"], hovertemplate="%{text}<br>%{x:.4g}, ppl %{y:.4g}", row=1, col=col)
        front = table[pareto_front(table[x], table["ppl"])].sort_values(x)
        fig.add_scatter(x=front[x], y=front["ppl"], mode="lines", line={"dash": "dot", "color": "black"},
                        name="Pareto front", legendgroup="front", showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(type="log", title_text="µJ per token" if col == 1 else "bytes per token", row=1, col=col)
    fig.update_yaxes(type="log", title_text="perplexity (held-out)", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=title or "Head-to-head: quality vs cost (lower-left is better)", height=520)
    return fig


def compare_page(manifest: dict, table: pd.DataFrame) -> str:
    """The run's HTML page: the Pareto plots, then the table."""
    facts = {"model": manifest.get("model"), "revision": manifest.get("model_revision"),
             "weights": manifest.get("weights_note"), "created": manifest.get("created"),
             "held-out tokens": table["n_tokens"].iloc[0], "time": f"{manifest.get('seconds', 0):.0f} s",
             "energy model": "block linears per token, batch-1 decode; weights from DRAM, activations in SRAM "
                             "(sparsescope.cost, sparsescope.harvest.compare)"}
    return html_page(f"sparsescope compare — {manifest.get('model')} ({manifest.get('run_id')})", facts,
                     [pareto_figure(table), "Head-to-head (per token)", table])

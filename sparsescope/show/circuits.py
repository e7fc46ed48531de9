"""Figures and the HTML page of a ``circuits`` run: faithfulness curves and the component × task effect heatmap."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from sparsescope.circuits.scores import TARGET
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


def _place(name: str, n_heads: int) -> tuple[str, float, float]:
    """A writer or reader name as (component, x, y) in the graph: columns alternate attention (query heads, then KV
    heads above them) and MLP per layer; embeddings left, logits right."""
    mid = (n_heads - 1) / 2
    if name == "embed":
        return name, -1.0, mid
    if name == "logits":
        return name, float("inf"), mid
    m = re.fullmatch(r"L(\d+)(?:H(\d+)(?:\.q)?|KV(\d+)\.[kv]|\.mlp)", name)
    layer = int(m.group(1))
    if m.group(2) is not None:
        return f"L{layer}H{m.group(2)}", 2.0 * layer, float(m.group(2))
    if m.group(3) is not None:
        return f"L{layer}KV{m.group(3)}", 2.0 * layer, n_heads + 0.5 + int(m.group(3))
    return f"L{layer}.mlp", 2.0 * layer + 1, mid


def circuit_graph(edges: pd.DataFrame, task: str, method: str, top: int | None = None, variant: str = "dense",
                  max_edges: int = 400) -> go.Figure:
    """The edge circuit of one task and method as a graph: components by layer (x) and head (y), one line per edge,
    its width by |score| and colour by sign (blue: the edge carries the behaviour). ``top``: draw the ``top`` edges by
    |score| instead of the chosen circuit; at most ``max_edges`` lines either way (the strongest), for legibility."""
    e = edges[(edges["task"] == task) & (edges["method"] == method)]
    if "variant" in e:
        e = e[e["variant"] == variant]
    e = e.loc[e["score"].abs().sort_values(ascending=False).index]
    e = e.head(top) if top is not None else e[e["in_circuit"]]
    shown = e.head(max_edges)
    n_heads = 1 + max((int(m.group(1)) for n in edges["up"].unique() if (m := re.fullmatch(r"L\d+H(\d+)", n))),
                      default=0)
    last = 2.0 * (int(edges["up_layer"].max()) + 1)
    pos = {}
    for name in pd.concat([shown["up"], shown["down"]]).unique():
        comp, x, y = _place(name, n_heads)
        pos[name] = (comp, last if x == float("inf") else x, y)
    fig = go.Figure()
    scale = float(shown["score"].abs().max()) if len(shown) else 1.0
    for sign, colour in ((-1, "royalblue"), (1, "crimson")):  # effect < 0: removing the edge lowers the metric
        part = shown[np.sign(shown["score"]) == sign]
        for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 1.01)):  # three widths: few traces, still readable
            band = part[(part["score"].abs() / scale >= lo) & (part["score"].abs() / scale < hi)]
            if not len(band):
                continue
            xs, ys = [], []
            for u, d in zip(band["up"], band["down"]):
                xs += [pos[u][1], pos[d][1], None]
                ys += [pos[u][2], pos[d][2], None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line=dict(color=colour, width=1 + 5 * hi), opacity=0.35 + 0.5 * hi))
    comps = pd.DataFrame(pos.values(), columns=["component", "x", "y"]).drop_duplicates("component")
    fig.add_trace(go.Scatter(x=comps["x"], y=comps["y"], mode="markers+text", text=comps["component"],
                             textposition="top center", marker=dict(size=9, color="black"), showlegend=False))
    note = f"top {len(shown)} by |score|" if top is not None else f"circuit: {len(e)} edges"
    note += f" ({len(shown)} drawn)" if len(shown) < len(e) else ""
    fig.update_layout(title=f"{task}: {method} edge circuit — {note}; blue: removing the edge lowers the metric",
                      xaxis=dict(title="layer (attention, then MLP)", tickvals=[2 * i for i in range(int(last) // 2)],
                                 ticktext=[str(i) for i in range(int(last) // 2)]),
                      yaxis=dict(title="query head (KV heads above)", zeroline=False), height=520)
    return fig


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
    if "edges" in tables:
        edges = tables["edges"]
        methods = list(edges["method"].unique())
        for task in edges["task"].unique():
            parts.append(circuit_graph(edges, task, "eap_ig" if "eap_ig" in methods else methods[0]))
    if "effects" in tables:
        methods = list(tables["effects"]["method"].unique())
        parts.append(effect_heatmap(tables["effects"], "eap_ig" if "eap_ig" in methods else methods[0]))
    for name in ("tasks", "scores", "validation", "pruned", "overlap", "firing", "cluster_scores", "clusters"):
        if name in tables:
            parts += [name, tables[name]]
    facts = {"model": manifest.get("model"), "revision": manifest.get("model_revision"),
             "weights": manifest.get("weights_note"), "created": manifest.get("created")}
    return html_page(f"sparsescope circuits — {manifest.get('model')} ({manifest.get('run_id')})", facts, parts)


def score_tables(tables: dict[str, pd.DataFrame]) -> list:
    """Terminal tables of a discovery or compare run: held-out scores, attribution vs exact, overlap, firing."""
    cols = ["task", "variant", "level", "method", "cpr", "cmd", "random_cpr", "random_cmd", "necessity",
            "sufficiency", "n_components", "n_at_target", "seconds"]
    if "all_features_without_error" in tables["scores"].columns:  # SAE features: what the error term carries
        cols = cols[:-1] + ["error_in_circuit", "sufficiency_without_error", "all_features_without_error", "seconds"]
    out = [frame_table(tables["scores"][cols].set_index(["task", "method"]),
                       "held-out scores (MIB; random: mean of seeds)")]
    if "validation" in tables:
        out.append(frame_table(tables["validation"].set_index(["task", "method"]), "attribution vs exact patching"))
    if "overlap" in tables:
        overall = tables["overlap"][tables["overlap"]["layer"] == -1].drop(columns=["layer"])
        out.append(frame_table(overall.set_index(["task_a", "task_b"]), "circuit overlap (Jaccard, all layers)"))
    if "pruned" in tables and len(tables["pruned"]):
        out.append(frame_table(tables["pruned"].set_index(["task", "method", "variant"]),
                               f"pruned vs dense: circuit size at faithfulness {TARGET:g} (train) and held-out CPR"))
    if "cluster_scores" in tables:
        out.append(frame_table(tables["cluster_scores"].set_index(["method", "variant"]),
                               "co-activation clusters vs circuit membership (ARI; null: shuffled membership)"))
    if "firing" in tables and len(tables["firing"]):
        out.append(frame_table(tables["firing"].set_index(["task", "group"]),
                               "firing frequency: circuit neurons vs the rest"))
    return out

"""SAE runs shown: terminal tables (metrics with CIs, features vs neurons, feature cards), the density histogram
and the run's ``sae.html`` page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from rich.table import Table

from sparsescope.show.page import html_page
from sparsescope.store import RunDir


def _ci(r, name: str, fmt: str = "{:.3f}") -> str:
    v = getattr(r, name)
    if v != v:
        return ""
    return f"{fmt.format(v)} [{fmt.format(getattr(r, name + '_lo'))}, {fmt.format(getattr(r, name + '_hi'))}]"


def metrics_table(m: pd.DataFrame, run_id: str) -> Table:
    """``sae_metrics`` as a table: one row per split/family, 95 % intervals in brackets."""
    first = m.iloc[0]
    table = Table("split", "family", "tokens", "L0", "explained var.", "CE recovered", "KL score", "cosine", "dead",
                  "dense", title=f"{run_id}: {first.architecture} SAE at {first.site} ({first.d_in} → {first.d_sae}),"
                                 " 95 % CIs over prompts (held-out: over windows)")
    for r in m.itertuples():
        table.add_row(r.split, r.family, str(r.n_tokens), _ci(r, "l0", "{:.1f}"), _ci(r, "explained_variance"),
                      _ci(r, "ce_loss_recovered"), _ci(r, "kl_score"), _ci(r, "cosine"), f"{r.dead_frac:.1%}",
                      f"{r.dense_frac:.1%}")
    return table


def probe_summary(p: pd.DataFrame) -> Table:
    """ID vs OOD AUROC of the k-sparse probe per k, SAE features vs neurons, plus the OOD detector on all units."""
    sparse = p[(p.method == "k-sparse probe") & (p.target == "ood")].pivot_table(index="k", columns="units",
                                                                                   values="auroc")
    det = p[p.method == "ood detector"].groupby("units")["auroc"].mean()
    table = Table("k", *sparse.columns, title="ID vs OOD AUROC: k-sparse probe (out-of-fold), SAE features vs "
                                              "neurons; last row: OOD detector on all units (mean over held-out "
                                              "families)")
    for k, r in sparse.iterrows():
        table.add_row(str(k), *[f"{v:.3f}" for v in r])
    table.add_row("all", *[f"{det.get(u, float('nan')):.3f}" for u in sparse.columns])
    return table


def feature_card(card: dict) -> Table:
    """One feature: its top contexts (activating token in «»), densities in the title, logit effects below."""
    table = Table("rank", "activation", "context", title=card["title"], caption=card["caption"])
    for r in card["contexts"].itertuples():
        table.add_row(str(r.rank), f"{r.activation:.3g}", r.text)
    return table


def density_figure(features: pd.DataFrame) -> go.Figure:
    """Histogram of log10 feature density per split/family (features that never fired at −7)."""
    fig = go.Figure()
    for (split, family), part in features.groupby(["split", "family"], sort=False):
        d = part["density"].to_numpy()
        fig.add_trace(go.Histogram(x=np.log10(np.maximum(d, 1e-7)), name=f"{split}/{family}", opacity=0.6,
                                   nbinsx=60))
    fig.update_layout(barmode="overlay", xaxis_title="log10 feature density (−7: never fired)",
                      yaxis_title="features", title="SAE feature density")
    return fig


def write_page(run: RunDir) -> Path:
    """``sae.html`` in the run folder: metrics, feature-density histograms and the features-vs-neurons table."""
    tables = run.manifest["tables"]
    parts: list = ["Metrics (95 % CIs over prompts; held-out: over windows)",
                   run.read("sae_metrics").drop(columns=["run_id"])]
    if "sae_features" in tables:
        parts += ["Feature density", density_figure(run.read("sae_features"))]
    if "sae_probe" in tables:
        parts += ["Features vs neurons: k-sparse probe and OOD detector",
                  run.read("sae_probe").drop(columns=["run_id"])]
    m = run.manifest
    data = m.get("data", {})
    facts = {"model": f"{m['model']} ({m.get('model_revision')})", "site": m.get("site"),
             "data": f"{data.get('text')}: {data.get('n_tokens')} tokens, context {data.get('context')}",
             "config": m.get("config"), "note": m.get("weights_note")}
    return run.write_file("sae.html", html_page(f"SAE {run.run_id}", facts, parts))

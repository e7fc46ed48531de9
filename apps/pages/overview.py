"""Overview: chosen scan runs side by side — layer × site heatmap of any metric per split, ID − OOD with CI."""

import streamlit as st

import ui
from sparsescope.harvest import summary
from sparsescope.show import figures, report


def heatmap(run_id: str, metric: str, split: str):
    rows = ui.table("activations", [run_id], where=f"{ui.metric_where(metric)} AND split = {ui.quote(split)}")
    means = summary.pooled_means(summary.metric_rows(rows, metric)) if len(rows) else rows
    return report.heatmap(means, f"{metric} ({split})") if len(means) else None


def effect_band(run_id: str, metric: str):
    e = ui.table("effects", [run_id], where=ui.metric_where(metric))
    if e.empty or f"{summary.DIFF}_lo" not in e.columns:  # a run stored before effects had CI columns
        return None
    return figures.ood_minus_id(e, f"OOD − ID {metric} ({run_id})")


st.title("Overview")
chosen = ui.pick("scan", "Scan runs", "overview_runs", multi=True, table_name="activations")
if not chosen:
    ui.needs(ui.FIRST_RUN, "complete scan run")
else:
    ui.different_models(chosen)
    names = ui.metric_names("activations", chosen)
    c = st.columns(2)
    metric = c[0].selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0)
    splits = list(ui.sql("activations", chosen, "SELECT DISTINCT split FROM t ORDER BY split <> 'id', split")["split"])
    split = c[1].selectbox("Split", splits)
    for run_id, col in zip(chosen, ui.columns_for(chosen)):
        with col:
            fig = ui.cached(heatmap, run_id, metric, split)
            if fig is None:
                st.info(f"`{run_id}` has no '{split}' split.")
                continue
            ui.chart(fig, f"{metric} per layer and site on the '{split}' split of `{run_id}` "
                     f"({ui.models_of([run_id])[0]}), token-weighted over its suites.", key=f"heat_{run_id}")

    st.subheader("ID − OOD with 95 % CI")
    enames = ui.metric_names("effects", chosen)
    if not enames:
        st.info("No stored ID vs OOD statistics for these runs: `sparsescope report <run_id>` computes them "
                "(a scan with an ID and an OOD suite stores them itself).")
    else:
        emetric = st.selectbox("Metric with stored CIs", enames, key="effect_metric")
        for run_id, col in zip(chosen, ui.columns_for(chosen)):
            with col:
                fig = ui.cached(effect_band, run_id, emetric)
                if fig is None:
                    st.info(f"`{run_id}` stores no CIs for {emetric} (`sparsescope report {run_id}` stores them).")
                    continue
                ui.chart(fig, "per layer, the OOD mean minus the ID mean with its 95 % bootstrap CI over source "
                         "texts; a band that misses 0 is a real difference (above 0: OOD text scores higher).",
                         key=f"eff_{run_id}")

st.subheader("All runs")
ui.frame(ui.catalog().assign(tables=lambda d: d["tables"].map(", ".join)), key="catalog")
ui.what("every run folder in the store; incomplete or damaged runs are listed with the reason and never read.")

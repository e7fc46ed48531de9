"""Overview: chosen scan runs side by side — layer × site heatmap of any metric per split, ID − OOD with CI."""

import streamlit as st

import ui
from sparsescope.harvest import summary
from sparsescope.show import report
from sparsescope.show import figures

st.title("Overview")
chosen = ui.pick("scan", "Scan runs", "overview_runs", multi=True, table_name="activations")
if not chosen:
    ui.needs(ui.FIRST_RUN, "complete scan run")
else:
    ui.different_models(chosen)
    acts = ui.table("activations", chosen)
    names = ui.metric_names(acts)
    c = st.columns(2)
    metric = c[0].selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0)
    splits = list(dict.fromkeys(acts["split"]))
    split = c[1].selectbox("Split", splits)
    for run_id, col in zip(chosen, ui.columns_for(chosen)):
        with col:
            rows = summary.metric_rows(acts[acts["run_id"] == run_id], metric)
            means = summary.pooled_means(rows[rows["split"] == split])
            if means.empty:
                st.info(f"`{run_id}` has no '{split}' split.")
                continue
            ui.chart(report.heatmap(means, f"{metric} ({split})"),
                     f"{metric} per layer and site on the '{split}' split of `{run_id}` ({ui.models_of([run_id])[0]}), "
                     "token-weighted over its suites.", key=f"heat_{run_id}")

    st.subheader("ID − OOD with 95 % CI")
    effects = ui.table("effects", chosen)
    if effects.empty:
        st.info("No stored ID vs OOD statistics for these runs: `sparsescope report <run_id>` computes them "
                "(a scan with an ID and an OOD suite stores them itself).")
    else:
        enames = ui.metric_names(effects)
        emetric = st.selectbox("Metric with stored CIs", enames, key="effect_metric")
        name, _, t = emetric.partition("@")
        for run_id, col in zip(chosen, ui.columns_for(chosen)):
            e = effects[(effects["run_id"] == run_id) & (effects["metric"] == name)]
            e = e[e["threshold"].isna()] if not t else e[(e["threshold"] - float(t)).abs() < 1e-9]
            with col:
                if e.empty:
                    st.info(f"`{run_id}` stores no CIs for {emetric}.")
                    continue
                ui.chart(figures.ood_minus_id(e, f"OOD − ID {emetric} ({run_id})"),
                         "per layer, the OOD mean minus the ID mean with its 95 % bootstrap CI over source texts; a "
                         "band that misses 0 is a real difference (above 0: OOD text scores higher).", key=f"eff_{run_id}")

st.subheader("All runs")
ui.frame(ui.catalog().assign(tables=lambda d: d["tables"].map(", ".join)), key="catalog")
ui.what("every run folder in the store; incomplete or damaged runs are listed with the reason and never read.")

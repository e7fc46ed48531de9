"""Spiking & head-to-head: spike sparsity vs k, per-layer spike statistics, the quantization vs activation
sparsity vs spiking Pareto plot."""

import streamlit as st

import ui
from sparsescope.show import figures



def sweep_figure(run_ids: tuple):
    sweep = ui.table("sweep", run_ids)
    return figures.sweep_figure(sweep) if len(sweep) else None


def spike_heatmap(run_id: str, metric: str):
    rows = ui.table("spikes", [run_id], where=f"metric = {ui.quote(metric)}")
    return figures.layer_site_heatmap(rows, f"{metric} ({run_id})")


def pareto(run_id: str):
    from sparsescope.show.compare import pareto_figure

    return pareto_figure(ui.table("compare", [run_id]), f"{ui.models_of([run_id])[0]}: quality vs cost ({run_id})")


st.title("Spiking & head-to-head")
chosen = ui.pick("spike", "Spike runs", "spike_runs", multi=True, table_name="spikes")
if not chosen:
    ui.needs("sparsescope spike --per-layer --sweep k=2,2.5,3,3.5,4", "complete spike run")
else:
    ui.different_models(chosen)
    fig = ui.cached(sweep_figure, tuple(chosen))
    if fig is not None:
        ui.chart(fig, "spike sparsity (empty spike slots), the share of silent channels "
                 "(s = 0) and Δppl as the threshold parameter varies, one line per run.", key="sweep")
    else:
        ui.needs("sparsescope spike --sweep k=2,3,4", "sweep")
    metrics = list(ui.sql("spikes", chosen, "SELECT DISTINCT metric FROM t ORDER BY metric")["metric"])
    metric = st.selectbox("Per-layer statistic", metrics, index=metrics.index("spike_sparsity")
                          if "spike_sparsity" in metrics else 0)
    for run_id, col in zip(chosen, ui.columns_for(chosen)):
        with col:
            ui.chart(ui.cached(spike_heatmap, run_id, metric),
                     f"{metric} of every converted linear (rows: weight sites, whose input is spike-coded), per "
                     "layer.", key=f"spk_{run_id}")
    energy = ui.table("energy", chosen)
    if len(energy):
        totals = energy[energy["name"] == "total"].pivot_table(
            index="run_id", columns="method", values=["energy_compute_uJ", "energy_total_uJ"]).round(4)
        totals.columns = [f"{a} · {b}" for a, b in totals.columns]
        ui.frame(totals.reset_index(), key="energy_totals")
        ui.what("whole-model energy over the evaluated tokens by method: compute only and with memory traffic "
                "(dense, input-sparse, spiking, and the spiking layer's quantized comparator).")

st.subheader("Head-to-head: quantization vs activation sparsity vs spiking")
cmp_ids = ui.pick("compare", "Compare runs", "cmp_runs", multi=True, table_name="compare")
if not cmp_ids:
    ui.needs("sparsescope compare", "complete compare run")
else:
    ui.different_models(cmp_ids)
    table = ui.table("compare", cmp_ids)
    for run_id, col in zip(cmp_ids, ui.columns_for(cmp_ids)):
        with col:
            t = table[table["run_id"] == run_id]
            ui.chart(ui.cached(pareto, run_id),
                     "held-out perplexity against energy and bytes per token for every configuration on one footing "
                     "(same text, same dense reference, same cost model); the dotted line is the Pareto front.",
                     key=f"pareto_{run_id}")
            ui.frame(t.drop(columns=["run_id"]), key=f"cmp_{run_id}")

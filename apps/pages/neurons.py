"""Neurons: firing-frequency histograms, dead and dense neurons, search by layer and index, one prompt's view."""

import streamlit as st

import ui
from sparsescope.harvest import summary
from sparsescope.show import report
from sparsescope.show import figures

st.title("Neurons")
chosen = ui.pick("scan", "Scan run", "neuron_run", table_name="neurons")
if not chosen:
    ui.needs(ui.FIRST_RUN, "scan run with per-neuron counters")
    st.stop()
run_id = chosen[0]
neurons = ui.table("neurons", [run_id])
sites = list(dict.fromkeys(neurons["site"]))
site = st.selectbox("Site", sites)
ui.chart(report.fire_freq_histogram(neurons, site),
         "how many neurons fire on what share of tokens (|x_i| > 0.1·RMS), ID vs OOD, log scale: mass at 0 is dead "
         "neurons, mass near 1 dense ones.", key="hist")
acts = ui.table("activations", [run_id], where="metric IN ('dead_frac', 'dense_frac')")
if len(acts):
    ui.chart(figures.dead_dense(acts), "per layer, the share of neurons that never fired and that fired on more than "
             "half the tokens, per site and split.", key="deaddense")

st.subheader("Dead and dense neurons")
ff = neurons[(neurons["metric"] == "fire_freq") & (neurons["site"] == site)]
per = ff.groupby(["layer", "index"])["value"].agg(["min", "mean", "max"]).reset_index()
c = st.columns(2)
with c[0]:
    dead = per[per["max"] == 0]
    st.markdown(f"**{len(dead)} dead** (never fired on any suite)")
    ui.frame(dead, key="dead")
with c[1]:
    dense = per[per["min"] > 0.5].sort_values("min", ascending=False)
    st.markdown(f"**{len(dense)} dense** (fired on > 50 % of tokens on every suite)")
    ui.frame(dense, key="dense")
ui.what("neurons whose firing frequency is 0 on every suite (dead) or above 0.5 on every suite (dense), at this site.")

st.subheader("Search a neuron")
c = st.columns(2)
layers = sorted(ff["layer"].unique())
layer = c[0].selectbox("Layer", layers)
width = int(ff.loc[ff["layer"] == layer, "index"].max()) + 1
index = c[1].number_input(f"Index (0–{width - 1})", 0, width - 1, 0)
hit = neurons[(neurons["site"] == site) & (neurons["layer"] == layer) & (neurons["index"] == index)]
ui.frame(hit.pivot_table(index=["suite", "split"], columns="metric", values="value").reset_index(), key="hit")
rank = (per.loc[per["layer"] == layer, "mean"] < float(per.loc[(per["layer"] == layer) & (per["index"] == index),
                                                                 "mean"].iloc[0])).mean()
st.caption(f"Mean firing frequency above {rank:.0%} of the neurons of layer {layer} at {site}.")
ui.what("one neuron's firing frequency and mean |x| on every suite of the run.")

st.subheader("One prompt")
st.info("Token-level values are not stored: the recorder streams per-token statistics into per-prompt means, and no "
        "command writes per-token rows yet. The finest stored view is per prompt, below.")
prompt_ids = ui.table("prompts", [run_id], columns="DISTINCT suite, split, prompt_id")
if len(prompt_ids):
    pid = st.selectbox("Prompt", list(prompt_ids["prompt_id"]), format_func=lambda p: p)
    rows = ui.table("prompts", [run_id], where=f"prompt_id = '{pid.replace(chr(39), chr(39) * 2)}'")
    names = ui.metric_names(rows)
    metric = st.selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0, key="p_metric")
    m = summary.metric_rows(rows, metric)
    ui.chart(figures.layer_site_heatmap(m, f"{metric} on prompt {pid}"),
             "this prompt's token-weighted metric per layer and site: which sites it makes sparse.", key="prompt")

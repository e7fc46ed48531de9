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
sites = list(ui.sql("neurons", [run_id], "SELECT DISTINCT site FROM t ORDER BY site <> 'mlp.hook_post', site")["site"])
site = st.selectbox("Site", sites)
at_site = f"metric = 'fire_freq' AND site = {ui.quote(site)}"


def histogram(run_id: str, site: str):
    freqs = ui.table("neurons", [run_id], columns="metric, site, split, value",
                     where=f"metric = 'fire_freq' AND site = {ui.quote(site)} AND split IN ('id', 'ood')")
    return report.fire_freq_histogram(freqs, site)


def dead_dense(run_id: str, site: str):
    acts = ui.table("activations", [run_id], where=f"metric IN ('dead_frac', 'dense_frac') AND site = {ui.quote(site)}")
    return figures.dead_dense(acts) if len(acts) else None


ui.chart(ui.cached(histogram, run_id, site),
         "how many neurons fire on what share of tokens (|x_i| > 0.1·RMS), ID vs OOD, log scale: mass at 0 is dead "
         "neurons, mass near 1 dense ones.", key="hist")
fig = ui.cached(dead_dense, run_id, site)
if fig is not None:
    ui.chart(fig, "per layer, the share of neurons at this site that never fired and that fired on more than half the "
             "tokens, per split.", key="deaddense")

st.subheader("Dead and dense neurons")
SHOWN = 500  # rows per table sent to the browser; the counts cover all
per = (f'SELECT layer, "index", min(value) AS "min", avg(value) AS "mean", max(value) AS "max" FROM t '
       f'WHERE {at_site} GROUP BY layer, "index"')
counts = ui.sql("neurons", [run_id], f"SELECT count(*) FILTER (WHERE \"max\" = 0) AS dead, "
                f"count(*) FILTER (WHERE \"min\" > 0.5) AS dense FROM ({per})").iloc[0]
c = st.columns(2)
with c[0]:
    st.markdown(f"**{counts['dead']} dead** (never fired on any suite)")
    ui.frame(ui.sql("neurons", [run_id], f'SELECT * FROM ({per}) WHERE "max" = 0 ORDER BY layer, "index" '
                    f"LIMIT {SHOWN}"), key="dead")
with c[1]:
    st.markdown(f"**{counts['dense']} dense** (fired on > 50 % of tokens on every suite)")
    ui.frame(ui.sql("neurons", [run_id], f'SELECT * FROM ({per}) WHERE "min" > 0.5 ORDER BY "min" DESC, layer, '
                    f'"index" LIMIT {SHOWN}'), key="dense")
ui.what("neurons whose firing frequency is 0 on every suite (dead) or above 0.5 on every suite (dense), at this site"
        f"; each table shows the first {SHOWN} (sorted by layer, or densest first).")

st.subheader("Search a neuron")
c = st.columns(2)
widths = ui.sql("neurons", [run_id], f'SELECT layer, max("index") + 1 AS width FROM t WHERE {at_site} '
                "GROUP BY layer ORDER BY layer").set_index("layer")["width"]
layer = c[0].selectbox("Layer", list(widths.index))
width = int(widths[layer])
index = c[1].number_input(f"Index (0–{width - 1})", 0, width - 1, 0)
hit = ui.table("neurons", [run_id], where=f'site = {ui.quote(site)} AND layer = {int(layer)} AND "index" = {int(index)}')
ui.frame(hit.pivot_table(index=["suite", "split"], columns="metric", values="value").reset_index(), key="hit")
rank = ui.sql("neurons", [run_id], f'WITH m AS ({per}) SELECT avg(CAST(m."mean" < me."mean" AS DOUBLE)) AS below '
              f'FROM m, (SELECT "mean" FROM m WHERE layer = {int(layer)} AND "index" = {int(index)}) me '
              f"WHERE m.layer = {int(layer)}")["below"].iloc[0]
st.caption(f"Mean firing frequency above {rank:.0%} of the neurons of layer {layer} at {site}.")
ui.what("one neuron's firing frequency and mean |x| on every suite of the run.")

st.subheader("One prompt")
st.info("Token-level values are not stored: the recorder streams per-token statistics into per-prompt means, and no "
        "command writes per-token rows yet. The finest stored view is per prompt, below.")
prompt_ids = ui.table("prompts", [run_id], columns="DISTINCT suite, split, prompt_id")
if len(prompt_ids):
    pid = st.selectbox("Prompt", list(prompt_ids["prompt_id"]), format_func=lambda p: p)
    rows = ui.table("prompts", [run_id], where=f"prompt_id = {ui.quote(pid)}")
    names = ui.metric_names("prompts", [run_id])
    metric = st.selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0, key="p_metric")
    m = summary.metric_rows(rows, metric)
    ui.chart(figures.layer_site_heatmap(m, f"{metric} on prompt {pid}"),
             "this prompt's token-weighted metric per layer and site: which sites it makes sparse.", key="prompt")

"""ID vs OOD: corruption-ladder curves with CI bands, per-family effects, the OOD detector against its baselines."""

import streamlit as st

import ui
from sparsescope.harvest import summary
from sparsescope.show import report
from sparsescope.show import figures

st.title("ID vs OOD")
chosen = ui.pick("scan", "Scan runs", "idood_runs", multi=True, table_name="prompts")
if not chosen:
    ui.needs(ui.FIRST_RUN + " --ladders shuffle,char_noise", "complete scan run")
    st.stop()
ui.different_models(chosen)


@st.cache_data(show_spinner="bootstrap CIs along the ladders (once per run)", max_entries=16)
def ladder_means(sig: tuple, run_id: str):
    """Per layer group, the ladder levels' means with bootstrap CIs (from the stored per-prompt values)."""
    from sparsescope.stats import split_means

    pairs = " OR ".join(f"(metric = '{m}' AND " + ("threshold IS NULL)" if t != t else f"threshold = {t})")
                        for m, t in summary.PROFILE_METRICS)
    rows = ui.table("prompts", [run_id], where=f"split LIKE '%@%' AND site <> 'logits' AND ({pairs})")
    if rows.empty:
        return rows
    groups = summary.layer_groups(rows)
    out = []
    for name in dict.fromkeys(rows["split"].str.partition("@")[0]):
        lad = groups[groups["split"].str.startswith(f"{name}@")]
        out.append(split_means(lad, n_boot=500).assign(ladder=name))
    import pandas as pd

    means = pd.concat(out, ignore_index=True)
    return means.assign(group=means["layer"].map(dict(enumerate(summary.GROUPS))))


st.subheader("Corruption ladders")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    with col:
        means = ladder_means(ui.store.signature(ui.root()), run_id)
        if means.empty:
            ui.needs(f"sparsescope scan --ladders shuffle,char_noise  # (run {run_id} has no ladder)",
                     "corruption ladder")
            continue
        metric = st.selectbox("Metric", list(dict.fromkeys(means["metric"])), key=f"lad_m_{run_id}")
        ui.chart(report.ladder_bands(means, metric),
                 f"{metric} against the share of corrupted tokens, averaged over early / middle / late layers, with "
                 "95 % bootstrap bands over prompts: a rising curve means corruption makes the site sparser.",
                 key=f"lad_{run_id}")
        trends = ui.table("trends", [run_id])
        if len(trends):
            ui.frame(summary.trend_summary(trends.drop(columns="run_id")), key=f"trend_{run_id}")
            ui.what("Spearman ρ of value vs corruption level per layer group with its CI, and how many layers "
                    "trend up or down.")

st.subheader("Per-family effects")
acts = ui.table("activations", chosen)
c = st.columns(2)
names = ui.metric_names(acts)
metric = c[0].selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0, key="fam_metric")
site = c[1].selectbox("Site", list(dict.fromkeys(acts["site"])), key="fam_site")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    with col:
        rows = summary.metric_rows(acts[(acts["run_id"] == run_id) & (acts["site"] == site)], metric)
        if not {"id", "ood"} <= set(rows["split"]):
            st.info(f"`{run_id}` needs both an ID and an OOD suite for this view.")
            continue
        ui.chart(figures.family_effects(rows, f"{metric} at {site}: OOD family − ID ({run_id})"),
                 "for each OOD family, its token-weighted mean minus the pooled ID mean at every layer: which kind "
                 "of unfamiliar text moves sparsity, and where.", key=f"fam_{run_id}")

st.subheader("OOD detector on the sparsity profile")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    det = ui.table("detector", [run_id])
    with col:
        if det.empty:
            st.info(f"`{run_id}` has no detector table: it needs ≥ 2 OOD families (e.g. `--suites "
                    "prose,random_tokens,multilingual`); `sparsescope report` computes it.")
            continue
        ui.chart(figures.auroc_bars(det), "AUROC of a logistic regression on per-layer sparsity profiles, tested on "
                 "an OOD family it never saw, beside the model's own perplexity and max-softmax scores (95 % CI).",
                 key=f"det_{run_id}")
        ui.frame(det, key=f"dett_{run_id}")
st.caption("ROC curves are not stored in the run tables; `sparsescope report <run_id>` draws them in report.html.")

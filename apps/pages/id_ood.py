"""ID vs OOD: corruption-ladder curves with CI bands, per-family effects, the OOD detector against its baselines."""

import streamlit as st

import ui
from sparsescope.harvest import summary
from sparsescope.show import figures, report

st.title("ID vs OOD")
chosen = ui.pick("scan", "Scan runs", "idood_runs", multi=True, table_name="prompts")
if not chosen:
    ui.needs(ui.FIRST_RUN + " --ladders shuffle,char_noise", "complete scan run")
    st.stop()
ui.different_models(chosen)


def ladder_figure(run_id: str, metric: str, site: str):
    where = f"metric = {ui.quote(metric)} AND site = {ui.quote(site)}"  # one site: 12 traces, not 12 per site
    return report.ladder_bands(ui.table("ladder_means", [run_id], where=where), metric)


def trend_table(run_id: str):
    trends = ui.table("trends", [run_id])
    return summary.trend_summary(trends.drop(columns="run_id")) if len(trends) else None


st.subheader("Corruption ladders")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    with col:
        has = ui.complete("scan").set_index("run_id").at[run_id, "tables"]
        if "ladder_means" not in has:
            if "trends" in has:  # recorded before the explorer read stored bands
                ui.needs(f"sparsescope report {run_id} --no-html", f"stored ladder bands for `{run_id}`")
            else:
                ui.needs(f"sparsescope scan --ladders shuffle,char_noise  # (run {run_id} has no ladder)",
                         "corruption ladder")
            continue
        metrics = list(ui.sql("ladder_means", [run_id], "SELECT DISTINCT metric FROM t ORDER BY metric")["metric"])
        sites = list(ui.sql("ladder_means", [run_id], "SELECT DISTINCT site FROM t ORDER BY site <> 'mlp.hook_post', "
                            "site")["site"])
        c = st.columns(2)
        metric = c[0].selectbox("Metric", metrics, index=metrics.index("hoyer") if "hoyer" in metrics else 0,
                                key=f"lad_m_{run_id}")
        site = c[1].selectbox("Site", sites, key=f"lad_s_{run_id}")
        ui.chart(ui.cached(ladder_figure, run_id, metric, site),
                 f"{metric} at {site} against the share of corrupted tokens, averaged over early / middle / late "
                 "layers, with 95 % bootstrap bands over prompts: a rising curve means corruption makes the site "
                 "sparser.", key=f"lad_{run_id}")
        trends = ui.cached(trend_table, run_id)
        if trends is not None:
            ui.frame(trends, key=f"trend_{run_id}")
            ui.what("Spearman ρ of value vs corruption level per layer group with its CI, and how many layers "
                    "trend up or down.")


def family_figure(run_id: str, metric: str, site: str):
    rows = ui.table("activations", [run_id], where=f"{ui.metric_where(metric)} AND site = {ui.quote(site)}")
    if not {"id", "ood"} <= set(rows["split"]):
        return None
    return figures.family_effects(summary.metric_rows(rows, metric), f"{metric} at {site}: OOD family − ID ({run_id})")


st.subheader("Per-family effects")
c = st.columns(2)
names = ui.metric_names("activations", chosen)
metric = c[0].selectbox("Metric", names, index=names.index("hoyer") if "hoyer" in names else 0, key="fam_metric")
sites = list(ui.sql("activations", chosen, "SELECT DISTINCT site FROM t ORDER BY site <> 'mlp.hook_post', site")["site"])
site = c[1].selectbox("Site", sites, key="fam_site")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    with col:
        fig = ui.cached(family_figure, run_id, metric, site)
        if fig is None:
            st.info(f"`{run_id}` needs both an ID and an OOD suite for this view.")
            continue
        ui.chart(fig, "for each OOD family, its token-weighted mean minus the pooled ID mean at every layer: which "
                 "kind of unfamiliar text moves sparsity, and where.", key=f"fam_{run_id}")


def auroc_figure(run_id: str):
    return figures.auroc_bars(ui.table("detector", [run_id]))


def roc_figure(run_id: str):
    det, roc = ui.table("detector", [run_id]), ui.table("roc", [run_id])
    return report.roc_figure(det, roc) if len(roc) else None


st.subheader("OOD detector on the sparsity profile")
for run_id, col in zip(chosen, ui.columns_for(chosen)):
    det = ui.table("detector", [run_id])
    with col:
        if det.empty:
            st.info(f"`{run_id}` has no detector table: it needs ≥ 2 OOD families (e.g. `--suites "
                    "prose,random_tokens,multilingual`); `sparsescope report` computes it.")
            continue
        roc = ui.cached(roc_figure, run_id)
        if roc is None:  # runs reported before ROC points were stored: the AUROC bars, and how to get the curves
            ui.chart(ui.cached(auroc_figure, run_id), "AUROC of a logistic regression on per-layer sparsity "
                     "profiles, tested on an OOD family it never saw, beside the model's own perplexity and "
                     "max-softmax scores (95 % CI).", key=f"det_{run_id}")
            ui.needs(f"sparsescope report {run_id} --no-html", f"stored ROC points for `{run_id}`")
        else:  # the legend carries each AUROC with its CI, so the bar chart would repeat it
            ui.chart(roc, "per held-out OOD family, the ROC curve of a logistic regression on per-layer sparsity "
                     "profiles (trained without that family) against the model's own perplexity and max-softmax "
                     "scores on the same held-out prompts (dotted: chance); AUROC [95 % CI] in the legend.",
                     key=f"roc_{run_id}")
        ui.frame(det, key=f"dett_{run_id}")

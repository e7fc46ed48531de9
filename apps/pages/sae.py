"""SAE features: quality of trained sparse autoencoders and a feature browser (top contexts, density, logits)."""

import streamlit as st

import ui
from sparsescope.show import figures

st.title("SAE features")
chosen = ui.pick("sae", "SAE runs", "sae_runs", multi=True, table_name="sae_metrics")
if not chosen:
    ui.needs("sparsescope sae train --site blocks.6.mlp.hook_post", "SAE run (kind `sae`)")
    st.stop()
ui.different_models(chosen)
metrics = ui.table("sae_metrics", chosen)
ui.chart(figures.sae_quality(metrics), "every trained SAE's sparsity (L0) against the share of the site's variance "
         "it explains: up and to the left is better.", key="saeq")
ui.frame(metrics, key="sae_metrics")
ui.what("the stored quality metrics per SAE and split/family, with CI columns where stored.")

run_id = st.selectbox("Browse features of run", chosen)
features = ui.table("sae_features", [run_id])
if features.empty:
    st.info(f"`{run_id}` stores no per-feature table.")
    st.stop()
site = st.selectbox("Site", list(dict.fromkeys(features["site"])))
f = features[features["site"] == site]
ui.chart(figures.feature_density(f), "how often features fire, per split: a spike at the far left is dead "
         "features, one near 0 dense ones.", key="density")
wide = f.pivot_table(index="feature", columns="split", values="density").reset_index()
ui.frame(wide, key="features")
ui.what("per feature, its density on each split (click a column to sort: e.g. features that fire on OOD text only).")
feature = st.number_input("Feature", 0, int(f["feature"].max()), int(f.loc[f["density"].idxmax(), "feature"]))
contexts = ui.table("sae_contexts", [run_id], where=f"site = '{site}' AND feature = {int(feature)}")
if len(contexts):
    st.markdown("**Top contexts** (the activating token in «»)")
    for r in contexts.sort_values("rank").head(10).itertuples(index=False):
        st.markdown(f"- `{r.activation:.3f}` {r.text}")
logits = ui.table("sae_logits", [run_id], where=f"site = '{site}' AND feature = {int(feature)}")
if len(logits):
    ui.chart(figures.logit_effects(logits),
             "the tokens whose logits this feature raises most (+) and lowers most (−).",
             key="logits")

"""sparsescope explorer: where latent sparsity can be harvested, at a glance. Start it with `sparsescope app`.

Reads only the run store (`--runs DIR`, default ./runs); never loads or runs a model.
"""

import streamlit as st

import ui

st.set_page_config(page_title="sparsescope explorer", layout="wide")

PAGES = [
    st.Page("pages/harvest.py", title="Harvest", default=True),
    st.Page("pages/overview.py", title="Overview"),
    st.Page("pages/id_ood.py", title="ID vs OOD", url_path="id_vs_ood"),
    st.Page("pages/spiking.py", title="Spiking & head-to-head", url_path="spiking"),
    st.Page("pages/neurons.py", title="Neurons"),
    st.Page("pages/sae.py", title="SAE features", url_path="sae"),
    st.Page("pages/circuits.py", title="Circuits"),
]
page = st.navigation(PAGES)

with st.sidebar:
    runs = ui.catalog()
    st.markdown(f"**Runs folder** `{ui.root()}`")
    if runs.empty:
        st.caption("no runs yet")
    else:
        ok = runs["problem"].isna()
        st.caption(f"{int(ok.sum())} complete · {int((~ok).sum())} incomplete")
        bad = runs[~ok]
        if len(bad):
            with st.expander(f"{len(bad)} incomplete run(s), not read"):
                for r in bad.itertuples(index=False):
                    st.markdown(f"- `{r.run_id}` ({r.status}): {r.problem}")
page.run()

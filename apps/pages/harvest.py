"""Harvest (landing page): per layer × linear, the sparsity there, what each lever saves and what it costs."""

import math

import pandas as pd
import streamlit as st
import yaml

import ui
from sparsescope.show import figures, harvest



def available(scan_ids: tuple):
    acts = ui.table("activations", scan_ids, where="metric = 'teal_sparsity' AND split = 'id'")
    if acts.empty:
        return None
    return figures.layer_site_heatmap(harvest.available_sparsity(acts), "Activation sparsity available "
                                      "(teal_sparsity@0.1, ID text)", value="available", site="input_site")


def priced(spike_id: str, scan_ids: tuple, weights_id: str | None):
    """The per layer × linear harvest table (read-only: shared by every session)."""
    acts = ui.table("activations", scan_ids, where="metric = 'teal_sparsity' AND split = 'id'") if scan_ids else None
    knees = ui.table("knees", [weights_id]) if weights_id else None
    return harvest.harvest_table(ui.table("energy", [spike_id]), ui.table("spikes", [spike_id]),
                                 ui.table("quality", [spike_id]), acts, knees)


def bars(spike_id: str, scan_ids: tuple, weights_id: str | None, stars: tuple):
    """Savings per layer and lever; `stars`: (layer, choice) of the budgeted plan."""
    return figures.harvest_bars(ui.cached(priced, spike_id, scan_ids, weights_id),
                                pd.DataFrame(list(stars), columns=["layer", "choice"]))


st.title("Harvest: where latent sparsity pays")
runs = ui.catalog()
if runs.empty:
    st.info(f"No runs in `{ui.root()}` yet (pass another folder with `sparsescope app --runs DIR`). "
            f"Make a first run:\n\n```\n{ui.FIRST_RUN}\nsparsescope spike --per-layer --sweep k=2,3,4\n"
            "sparsescope compare\n```\nthen reload this page.")
    st.stop()

spike_runs = ui.complete("spike", "energy")
scans = ui.complete("scan", "activations")
models = list(dict.fromkeys([*spike_runs["model"], *scans["model"]]))
if not models:
    ui.needs(ui.FIRST_RUN, "complete scan or spike run")
    st.stop()
model = st.selectbox("Model", models, help="Harvest numbers are per model; runs of other models are not mixed in.")
scan_ids = tuple(scans.loc[scans["model"] == model, "run_id"])

spike_id = ui.pick("spike", "Spike run (costs of the spiking conversion, per-layer Δppl)", "harvest_spike",
                   table_name="energy", model=model)
if not spike_id:
    fig = ui.cached(available, scan_ids) if scan_ids else None
    if fig is not None:
        ui.chart(fig, "the share of each linear's input entries that can be zeroed at ≤ 10 % relative error, "
                 "recorded by your scans; pricing it needs a spike run.")
    ui.needs("sparsescope spike --per-layer",
             f"spike run of {model} (it prices every linear and measures per-layer Δppl)")
    st.stop()
spike_id = spike_id[0]
quality = ui.table("quality", [spike_id])
weights_ids = ui.ids("weights", "knees", model)
table = ui.cached(priced, spike_id, scan_ids, weights_ids[0] if weights_ids else None)
compare_ids = ui.ids("compare", "compare", model)
compare = ui.table("compare", compare_ids[:1]) if compare_ids else pd.DataFrame()
plan_ids = ui.ids("plan", "plan", model)

dense_ppl = quality.loc[quality["scope"] == "dense", "value"]
dense_ppl = float(dense_ppl.iloc[0]) if len(dense_ppl) else math.nan

c = st.columns(4)
c[0].metric("dense, per token (block linears)", ui.energy(table["dense_uJ"].sum()),
            f"{table['dense_bytes'].sum() / 1e6:.3g} MB/token", delta_color="off")
for col, lever, name in ((c[1], "spike", "spike conversion"), (c[2], "act", "activation sparsity"),
                         (c[3], "int8", "int8 weights")):
    saved = table[f"{lever}_uJ_saved"].sum(min_count=1)
    col.metric(f"{name} saves, per token", "—" if pd.isna(saved) else ui.energy(saved),
               "not recorded" if pd.isna(saved) else f"{saved / table['dense_uJ'].sum():.1%} of dense",
               delta_color="off")
ui.what("per token, summed over the block linears: the energy of the dense model and what each lever alone would "
        "save, priced by the project's cost model (weights from DRAM, activations in SRAM; Horowitz 45 nm).")

# -- the budgeted plan ------------------------------------------------------------------------------------------------
st.subheader("Recommended plan under a quality budget")
if plan_ids:
    plan_rows = ui.table("plan", plan_ids[:1])
    candidates = plan_rows[plan_rows["choice"] != "dense"].rename(
        columns={"energy_saved_uJ": "uJ_saved", "delta_ppl_est": "dppl"})
    unit, source = ["layer", "site"], f"planner run `{plan_ids[0]}`"
else:
    int8 = compare[compare["config"] == "int8 per-channel"]["delta_ppl"] if len(compare) else pd.Series(dtype=float)
    candidates = harvest.layer_candidates(table, float(int8.iloc[0]) if len(int8) else None)
    unit, source = "layer", f"spike run `{spike_id}`" + (f" and compare run `{compare_ids[0]}`" if len(int8) else "")
if candidates.empty or math.isnan(dense_ppl):
    ui.needs("sparsescope spike --per-layer", "per-layer quality measurement (Δppl of each layer converted alone)")
    chosen = candidates.iloc[0:0].assign(selected=False)
else:
    pct = st.slider("Quality budget: Δppl as % of the dense perplexity", 0.0, 20.0, 5.0, 0.5,
                    help="The options chosen maximise µJ saved with their Δppl summed within this budget.")
    budget = pct / 100 * dense_ppl
    chosen = harvest.choose(candidates, budget, unit)
    picked = chosen[chosen["selected"]]
    estimated = "measured" in chosen and not chosen["measured"].astype(bool).all()
    m = st.columns(3)
    m[0].metric("options chosen", f"{len(picked)} of {chosen[unit].drop_duplicates().shape[0]} "
                f"{'linears' if unit != 'layer' else 'layers'}")
    m[1].metric("energy saved, per token", ui.energy(picked["uJ_saved"].sum()),
                f"{picked['uJ_saved'].sum() / table['dense_uJ'].sum():.1%} of dense", delta_color="off")
    m[2].metric("Δppl (sum of per-option estimates)", f"{picked['dppl'].clip(lower=0).sum():+.4g}",
                f"budget {budget:.4g} (dense ppl {dense_ppl:.4g})", delta_color="off")
    ui.frame(picked.drop(columns=["selected"]), key="picked")
    ui.what(f"the options from {source} that save the most energy with their summed Δppl within the budget "
            "(exact multiple-choice knapsack; one option per unit)"
            + (". int8 Δppl is the compare run's whole-model figure shared out by bytes (measured=False): an "
               "estimate until the plan is applied." if estimated else "."))
    spike_plan = ui.manifest(spike_id).get("config", {}).get("plan", {}).get("rules", [{}])
    plan = harvest.plan_for(picked, spike_plan[0].get("params", {}) if spike_plan else {},
                            name=f"harvest {model} budget {pct:g}%")
    text = yaml.safe_dump(plan.to_dict(), sort_keys=False)
    st.download_button("Download plan YAML", text, file_name="harvest_plan.yaml", mime="application/x-yaml")
    st.caption("Apply it with `sparsescope spike --plan harvest_plan.yaml` (spike rules) or "
               "`sparsescope.intervene.apply(lm, Plan.from_yaml(...))`.")
    if plan_ids:
        stored = ui.store.run_file(ui.root(), plan_ids[0], "plan.yaml")
        if stored:
            st.download_button("Download the planner's own plan.yaml", stored, file_name="plan.yaml")

stars = chosen[chosen["selected"]].groupby("layer")["choice"].agg(lambda c: "+".join(sorted(set(c)))).reset_index()
ui.chart(ui.cached(bars, spike_id, scan_ids, weights_ids[0] if weights_ids else None,
                   tuple(stars.itertuples(index=False, name=None))),
         "µJ per token each lever would save per layer (summed over its linears); stars mark the layers the "
         "budgeted plan converts. Spiking saves compute but moves membrane potentials; int8 cuts weight reads.")

st.subheader("Per layer × linear")
view = table.drop(columns=["dense_bytes"])
if plan_ids:  # the planner's own recommendation, per linear
    mine = plan_rows[plan_rows["selected"].astype(bool)][["layer", "site", "choice"]]
    view = view.merge(mine.rename(columns={"choice": "planner_choice"}), on=["layer", "site"], how="left")
ui.frame(view.round(4), key="per_linear")
ui.what("every block linear: its widths, the spike sparsity measured when converted, the activation sparsity your "
        "scans recorded at its input (teal_sparsity@0.1, ID text), bytes and µJ per token each lever saves, the Δppl "
        "of its layer spiked alone, and the layer's essential weight sparsity (pruning, Δppl ≤ 1 %). Click a column "
        "to sort.")
if table["available"].isna().all():
    st.info(f"No activation sparsity recorded at the linears' input sites for {model}. Record it with:\n\n"
            f"```\n{harvest.SCAN_HINT}\n```")

if len(compare):
    st.subheader("Whole-model quality of each lever (compare run)")
    ui.frame(harvest.whole_model_quality(compare), key="quality")
    ui.what(f"Δppl and KL of each lever applied to every linear at once, from compare run `{compare_ids[0]}`, "
            "with the energy and bytes per token of the whole configuration.")
else:
    ui.needs("sparsescope compare", f"compare run of {model} (whole-model Δppl of int8 and TEAL)")

kernels = ui.table("kernels", ui.ids("bench", "kernels"))
if len(kernels):
    st.subheader("Measured kernel speed-ups (bench runs)")
    ui.frame(kernels, key="kernels")
    ui.what("measured seconds of the sparse kernels against the best dense path on this machine, per shape and "
            "sparsity, and the fraction of the ideal 1/(1−s) they reach.")
else:
    st.caption("Measured kernel time: none stored yet (`sparsescope bench kernels` stores it).")

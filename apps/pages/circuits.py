"""Circuits: per-component effects, faithfulness curves, scores against random circuits, overlap between tasks."""

import streamlit as st

import ui
from sparsescope.show import figures

st.title("Circuits")
chosen = ui.pick("circuits", "Circuit run", "circ_run", table_name="tasks")
if not chosen:
    ui.needs("sparsescope circuits", "circuit run (kind `circuits`)")
    st.stop()
run_id = chosen[0]
tasks = ui.table("tasks", [run_id])
ui.frame(tasks, key="tasks")
ui.what("per task: prompts, the model's accuracy and logit difference, and whether it is at chance (then its "
        "circuit means little).")
variants = list(dict.fromkeys(ui.table("scores", [run_id]).get("variant", ["dense"])))
variant = st.selectbox("Model variant", variants, help="dense, or the pruned model whose circuits a "
                       "`circuits compare` run also found") if len(variants) > 1 else variants[0]


def of_variant(df):
    """The rows of the chosen model variant (tables written before variants existed are all dense); held-out
    faithfulness only."""
    df = df[df["variant"] == variant] if "variant" in df.columns else df
    return df[df["split"] == "test"] if "split" in df.columns else df


effects = ui.table("effects", [run_id])
if len(effects):
    c = st.columns(3)
    task = c[0].selectbox("Task", list(dict.fromkeys(effects["task"])))
    method = c[1].selectbox("Method", list(dict.fromkeys(effects["method"])))
    kind = c[2].selectbox("Component", list(dict.fromkeys(effects["kind"])))
    e = of_variant(effects[(effects["task"] == task) & (effects["method"] == method) & (effects["kind"] == kind)])
    ui.chart(figures.effect_heatmap(e, f"{task}: {method} effect per {kind}"),
             "the effect of each component on the task metric (blue: removing it hurts, red: removing it helps).",
             key="effects")
edges = ui.table("edges", [run_id])
if len(edges):
    from sparsescope.show.circuits import circuit_graph

    c = st.columns(2)
    task = c[0].selectbox("Task", list(dict.fromkeys(edges["task"])), key="edge_task")
    method = c[1].selectbox("Method", list(dict.fromkeys(edges["method"])), key="edge_method")
    ui.chart(circuit_graph(edges, task, method), "the edge circuit: which component's output feeds which "
             "component's input (line width: |effect| of patching that edge alone).", key="graph")
faith = ui.table("faithfulness", [run_id])
if len(faith):
    ui.chart(figures.faithfulness_curves(of_variant(faith)), "how much of the full model's task behaviour a circuit keeping "
             "that share of components recovers (1 = all).", key="faith")
scores = ui.table("scores", [run_id])
if len(scores):
    ui.frame(scores, key="scores")
    ui.what("CPR / CMD, necessity and sufficiency of each circuit beside a random circuit of the same size.")
overlap = ui.table("overlap", [run_id])
if len(overlap):
    overlap = of_variant(overlap)
    if "method" in overlap.columns:
        method = st.selectbox("Method of the compared circuits", list(dict.fromkeys(overlap["method"])),
                              key="overlap_method")
        overlap = overlap[overlap["method"] == method]
    whole = overlap[overlap["layer"] == -1]  # layer -1: the whole circuits, when stored
    ui.chart(figures.overlap_heatmap(whole if len(whole) else overlap), "how much the circuits of two tasks share "
             "(Jaccard of their components): modularity is low overlap.", key="overlap")

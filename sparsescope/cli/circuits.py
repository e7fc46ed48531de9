"""`sparsescope circuits`: task performance, ablation, circuit discovery, held-out scoring, modularity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import MODEL, RUNS_DIR, Bar, app, friendly, load, out, show

circuits_app = typer.Typer(no_args_is_help=True, help="Find, score and compare the circuits behind bundled tasks.")
app.add_typer(circuits_app, name="circuits")

TASKS = typer.Option("ioi,greater_than,induction,agreement,capitals", help="Tasks, comma-separated.")
TASK = typer.Option(..., help="Task: ioi, greater_than, induction, agreement or capitals.")
N = typer.Option(24, "--n", help="Prompt pairs per split (train finds circuits, test scores them).")
SEED = typer.Option(0, help="Template seed (the same seed gives the same prompts).")
ABLATION = typer.Option("counterfactual", help="counterfactual (corrupted prompt), mean (over the train prompts) "
                                               "or zero.")
RANDOM_SEEDS = typer.Option(5, help="Random circuits per size (the baseline).")
MASK_STEPS = typer.Option(60, help="Learned-mask optimisation steps.")
SAE = typer.Option(None, "--sae", help="SAE whose features (and error term) are the nodes: an sae run id, its folder "
                                       "or a checkpoint folder (level features); basis:<site> for the site's own "
                                       "units (the baseline).")


@circuits_app.command("tasks")
@friendly
def tasks_cmd(model: str = MODEL, tasks: str = TASKS, n: int = N, seed: int = SEED,
              runs_dir: Optional[Path] = RUNS_DIR):
    """Accuracy (good token beats bad) and mean logit difference of the model on every task, against chance."""
    from sparsescope import workflows
    from sparsescope.show.terminal import frame_table
    from sparsescope.store import RunStore

    with Bar("tasks", "tasks") as bar:
        run, table, seconds = workflows.circuits_tasks(RunStore(runs_dir), model, tasks, n, seed, load, bar)
    show(frame_table(table.drop(columns=["model"]).set_index("task"), f"{run.manifest['model']}: task performance "
                                                                        f"({2 * n} prompts each)"))
    out.print(f"{seconds:.1f} s; tables tasks → {run.path}; page: {run.path / 'circuits.html'}")


@circuits_app.command()
@friendly
def ablate(task: str = TASK,
           components: str = typer.Option(..., help="Components: L3H2 (head), L3.mlp, L3N17 (neuron), L3 (layer)."),
           model: str = MODEL, ablation: str = ABLATION, n: int = N, seed: int = SEED, sae: Optional[str] = SAE,
           runs_dir: Optional[Path] = RUNS_DIR):
    """Ablate the given components on the task's held-out prompts: metric and accuracy before and after."""
    from sparsescope import workflows
    from sparsescope.show.terminal import frame_table
    from sparsescope.store import RunStore

    row = workflows.circuits_ablate(model, task, components, ablation, n, seed, load, sae, RunStore(runs_dir))
    show(frame_table(row.set_index("task"), f"{components} ablated ({ablation})"))


@circuits_app.command()
@friendly
def discover(model: str = MODEL, tasks: str = TASKS,
             methods: str = typer.Option("eap,eap_ig,mask", help="eap, eap_ig, eap_ig_exact (EAP-IG, then exact "
                                                                "patching of its top --refine nodes), mask (learned), "
                                                                "exact (slow)."),
             level: str = typer.Option("heads", help="heads (query heads + MLPs), neurons, layers, edges "
                                                     "(writer → q/k/v, MLP input, logits), or features (--sae)."),
             ablation: str = ABLATION, n: int = N, seed: int = SEED,
             steps: int = typer.Option(5, help="Integrated-gradient steps of eap_ig."),
             random_seeds: int = RANDOM_SEEDS,
             validate: int = typer.Option(0, help="Exact-patch this many nodes to rank-correlate attribution."),
             mask_steps: int = MASK_STEPS,
             refine: float = typer.Option(0.1, help="eap_ig_exact: fraction of nodes exact-patched (EAP-IG's top)."),
             save: Optional[Path] = typer.Option(None, help="Folder for one circuit JSON per task and method."),
             sae: Optional[str] = SAE, runs_dir: Optional[Path] = RUNS_DIR):
    """Rank nodes per task and method, choose circuits on train prompts, score them (MIB) on held-out prompts."""
    from sparsescope import workflows
    from sparsescope.show.circuits import score_tables
    from sparsescope.store import RunStore

    cfg = workflows.circuits_config(methods, level, ablation, n, seed, steps, random_seeds, validate, mask_steps, sae,
                                    RunStore(runs_dir), refine)
    with Bar("discover", "evaluations") as bar:
        run, tables, seconds = workflows.circuits_discover(RunStore(runs_dir), model, tasks, cfg, save, load, bar)
    for table in score_tables(tables):
        show(table)
    out.print(f"{seconds:.1f} s; tables {', '.join(tables)} → {run.path}; page: {run.path / 'circuits.html'}")


@circuits_app.command()
@friendly
def score(task: str = TASK, circuit: Path = typer.Option(..., help="Circuit JSON written by `discover --save`."),
          model: str = MODEL, ablation: str = ABLATION, n: int = N, seed: int = SEED, sae: Optional[str] = SAE,
          runs_dir: Optional[Path] = RUNS_DIR):
    """Faithfulness, necessity and sufficiency of a saved circuit on the task's held-out prompts."""
    from sparsescope import workflows
    from sparsescope.show.terminal import frame_table
    from sparsescope.store import RunStore

    row = workflows.circuits_score(model, task, circuit, ablation, n, seed, load, sae, RunStore(runs_dir))
    show(frame_table(row.set_index("task"), f"circuit {circuit.name} on held-out {task} prompts ({ablation})"))


@circuits_app.command()
@friendly
def compare(model: str = MODEL, tasks: str = TASKS,
            methods: str = typer.Option("eap_ig", help="Methods (as for discover)."),
            prune: str = typer.Option("magnitude,wanda", help="Pruned variants, comma-separated: magnitude, wanda "
                                                              "(empty: dense only)."),
            sparsity: Optional[str] = typer.Option(None, help="Pruning sparsity per prune method, e.g. 0.147,0.156 "
                                                              "(default: each method's essential-sparsity knee from "
                                                              "the newest `weights --sensitivity` run)."),
            neurons: bool = typer.Option(True, help="Also neuron-level circuits: their firing frequency and "
                                                    "co-activation clusters."),
            clusters: int = typer.Option(8, help="Co-activation clusters of neurons (agglomerative)."),
            ablation: str = ABLATION, n: int = N, seed: int = SEED, random_seeds: int = RANDOM_SEEDS,
            mask_steps: int = MASK_STEPS, runs_dir: Optional[Path] = RUNS_DIR):
    """Modularity: circuit overlap across tasks, circuit neurons' firing and co-activation clusters, dense vs pruned
    circuits (size at 0.8 faithfulness, CPR)."""
    from sparsescope import workflows
    from sparsescope.show.circuits import score_tables
    from sparsescope.store import RunStore

    cfg = workflows.circuits_config(methods, "heads", ablation, n, seed, random_seeds=random_seeds,
                                    mask_steps=mask_steps)
    with Bar("compare", "evaluations") as bar:
        run, tables, seconds = workflows.circuits_compare(RunStore(runs_dir), model, tasks, cfg, prune, sparsity,
                                                          neurons, clusters, load, bar)
    for table in score_tables(tables):
        show(table)
    out.print(f"{seconds:.1f} s; tables {', '.join(tables)} → {run.path}; page: {run.path / 'circuits.html'}")

"""`sparsescope circuits`: task performance, ablation, circuit discovery, held-out scoring, modularity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import MODEL, RUNS_DIR, _evaluations, _frame_table, _show, app, friendly, load, out, \
    split_list
from sparsescope.errors import UserError

circuits_app = typer.Typer(no_args_is_help=True, help="Find, score and compare the circuits behind bundled tasks.")
app.add_typer(circuits_app, name="circuits")

TASKS = typer.Option("ioi,greater_than,induction,agreement,capitals", help="Tasks, comma-separated.")
N = typer.Option(24, "--n", help="Prompt pairs per split (train finds circuits, test scores them).")
SEED = typer.Option(0, help="Template seed (the same seed gives the same prompts).")
ABLATION = typer.Option("counterfactual", help="counterfactual (corrupted prompt), mean (over the train prompts) "
                                               "or zero.")


def _config(**kw):
    from sparsescope.circuits.mask import MaskConfig
    from sparsescope.circuits.study import DiscoverConfig

    mask_steps = kw.pop("mask_steps", None)
    cfg = DiscoverConfig(**kw)
    if mask_steps is not None:
        cfg.mask = MaskConfig(steps=mask_steps)
    return cfg


def _store(runs_dir):
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    store.check_writable()
    return store


def _save(store, lm, kind_config: dict, tables: dict, seconds: float) -> None:
    """Write a ``circuits`` run: tables and ``circuits.html``."""
    from dataclasses import asdict, is_dataclass

    from sparsescope import __version__
    from sparsescope.show.circuits import page

    config = {k: (asdict(v) if is_dataclass(v) else v) for k, v in kind_config.items()}
    manifest = {"kind": "circuits", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "seconds": seconds, "config": config}
    run = store.create(manifest)
    run.finalize({name: df.assign(run_id=run.run_id) for name, df in tables.items()})
    path = run.write_file("circuits.html", page(run.manifest, tables))
    out.print(f"{seconds:.1f} s; tables {', '.join(tables)} → {run.path}; page: {path}")


@circuits_app.command("tasks")
@friendly
def tasks_cmd(model: str = MODEL, tasks: str = TASKS, n: int = N, seed: int = SEED,
              runs_dir: Optional[Path] = RUNS_DIR):
    """Accuracy (good token beats bad) and mean logit difference of the model on every task, against chance."""
    from sparsescope.circuits.study import tasks_table
    from sparsescope.circuits.tasks import check_task

    names = split_list(tasks) or []
    for t in names:
        check_task(t)
    store = _store(runs_dir)
    start = time.perf_counter()
    lm = load(model)
    with _evaluations(len(names), "tasks") as bar:
        job = bar.add_task("tasks", total=len(names), label="")
        table = tasks_table(lm, names, n, seed, lambda k: bar.update(job, advance=k))
    _show(_frame_table(table.drop(columns=["model"]).set_index("task"), f"{lm.name}: task performance ({2 * n} "
                                                                        "prompts each)"))
    _save(store, lm, {"command": "tasks", "tasks": names, "n": n, "seed": seed}, {"tasks": table},
          time.perf_counter() - start)


@circuits_app.command()
@friendly
def ablate(task: str = typer.Option(..., help="Task name."),
           components: str = typer.Option(..., help="Components: L3H2 (head), L3.mlp, L3N17 (neuron), L3 (layer)."),
           model: str = MODEL, ablation: str = ABLATION, n: int = N, seed: int = SEED):
    """Ablate the given components on the task's held-out prompts: metric and accuracy before and after."""
    from sparsescope.circuits.patch import parse_components
    from sparsescope.circuits.study import ablate as run
    from sparsescope.circuits.tasks import check_task

    import pandas as pd

    check_task(task)
    nodes = parse_components(components)
    lm = load(model)
    result = run(lm, task, nodes, _config(ablation=ablation, n=n, seed=seed))
    _show(_frame_table(pd.DataFrame([result]).set_index("task"), f"{lm.name}: {components} ablated ({ablation})"))


@circuits_app.command()
@friendly
def discover(model: str = MODEL, tasks: str = TASKS,
             methods: str = typer.Option("eap,eap_ig,mask", help="eap, eap_ig, mask (learned), exact (slow)."),
             level: str = typer.Option("heads", help="Nodes: heads (query heads + MLPs), neurons, layers."),
             ablation: str = ABLATION, n: int = N, seed: int = SEED,
             steps: int = typer.Option(5, help="Integrated-gradient steps of eap_ig."),
             random_seeds: int = typer.Option(5, help="Random circuits per size (baseline)."),
             validate: int = typer.Option(0, help="Exact-patch this many nodes to rank-correlate attribution."),
             mask_steps: int = typer.Option(60, help="Learned-mask optimisation steps."),
             save: Optional[Path] = typer.Option(None, help="Folder for one circuit JSON per task and method."),
             runs_dir: Optional[Path] = RUNS_DIR):
    """Rank nodes per task and method, choose circuits on train prompts, score them (MIB) on held-out prompts."""
    from sparsescope.circuits.patch import Patcher
    from sparsescope.circuits.study import check_methods, run_discovery, save_circuit, work

    cfg = _config(methods=tuple(split_list(methods) or ()), level=level, ablation=ablation, n=n, seed=seed,
                  steps=steps, random_seeds=random_seeds, validate=validate, mask_steps=mask_steps)
    check_methods(cfg.methods)
    names = split_list(tasks) or []
    store = _store(runs_dir)
    start = time.perf_counter()
    lm = load(model)
    total = work(cfg, Patcher(lm, level, "zero").n_nodes) * len(names)
    with _evaluations(total, "discover") as bar:
        job = bar.add_task("discover", total=total, label="")
        tables = run_discovery(lm, names, cfg, lambda k: bar.update(job, advance=k))
        bar.update(job, completed=total)  # the total is an upper bound (equal circuit sizes are measured once)
    _print_scores(tables)
    if save:
        save.mkdir(parents=True, exist_ok=True)
        for (task, method), c in tables["circuit"].groupby(["task", "method"]):
            save_circuit(save / f"{task}.{method}.json", lm, c, level)
    _save(store, lm, {"command": "discover", "tasks": names, "discover": cfg}, tables, time.perf_counter() - start)


def _print_scores(tables) -> None:
    cols = ["task", "variant", "level", "method", "cpr", "cmd", "random_cpr", "random_cmd", "necessity", "sufficiency",
            "n_components", "seconds"]
    _show(_frame_table(tables["scores"][cols].set_index(["task", "method"]), "held-out scores (MIB; random: mean of "
                                                                             "seeds)"))
    if "validation" in tables:
        _show(_frame_table(tables["validation"].set_index(["task", "method"]), "attribution vs exact patching"))


@circuits_app.command()
@friendly
def score(task: str = typer.Option(..., help="Task name."),
          circuit: Path = typer.Option(..., help="Circuit JSON written by `discover --save`."),
          model: str = MODEL, ablation: str = ABLATION, n: int = N, seed: int = SEED):
    """Faithfulness, necessity and sufficiency of a saved circuit on the task's held-out prompts."""
    import pandas as pd

    from sparsescope.circuits.study import load_circuit, score_circuit
    from sparsescope.circuits.tasks import check_task

    check_task(task)
    lm = load(model)
    nodes, level = load_circuit(circuit, lm)
    result = score_circuit(lm, task, nodes, level, _config(ablation=ablation, n=n, seed=seed))
    _show(_frame_table(pd.DataFrame([result]).set_index("task"), f"{lm.name}: circuit {circuit.name}"))


@circuits_app.command()
@friendly
def compare(model: str = MODEL, tasks: str = TASKS,
            methods: str = typer.Option("eap_ig", help="Methods (as for discover)."),
            prune: str = typer.Option("magnitude", help="Pruning of the sparse variant: magnitude or wanda."),
            sparsity: Optional[float] = typer.Option(None, help="Pruning sparsity (default: the essential-sparsity "
                                                                "knee of the newest `weights --sensitivity` run)."),
            neurons: bool = typer.Option(True, help="Also neuron-level circuits and their firing frequency."),
            ablation: str = ABLATION, n: int = N, seed: int = SEED,
            random_seeds: int = typer.Option(3, help="Random circuits per size (baseline)."),
            mask_steps: int = typer.Option(60, help="Learned-mask optimisation steps."),
            runs_dir: Optional[Path] = RUNS_DIR):
    """Modularity: circuit overlap across tasks, firing of circuit neurons vs the rest, dense vs pruned circuits."""
    from sparsescope.circuits.patch import Patcher
    from sparsescope.circuits.study import check_methods, compare_pruned, knee_sparsity, work
    from sparsescope.circuits.tasks import check_task

    cfg = _config(methods=tuple(split_list(methods) or ()), ablation=ablation, n=n, seed=seed,
                  random_seeds=random_seeds, mask_steps=mask_steps)
    check_methods(cfg.methods)
    names = split_list(tasks) or []
    for t in names:
        check_task(t)
    if len(names) < 2:
        raise UserError("compare needs at least two tasks to measure overlap; pass e.g. --tasks ioi,induction")
    store = _store(runs_dir)
    sparsity = knee_sparsity(store, prune) if sparsity is None else sparsity
    start = time.perf_counter()
    lm = load(model)
    total = len(names) * (2 * work(cfg, Patcher(lm, "heads", "zero").n_nodes) +
                          (work(cfg, Patcher(lm, "neurons", "zero").n_nodes) if neurons else 0))
    with _evaluations(total, "compare") as bar:
        job = bar.add_task("compare", total=total, label="")
        tables = compare_pruned(lm, names, cfg, prune, sparsity, lambda k: bar.update(job, advance=k), neurons)
        bar.update(job, completed=total)
    _print_scores(tables)
    overall = tables["overlap"][tables["overlap"]["layer"] == -1]
    _show(_frame_table(overall.drop(columns=["layer"]).set_index(["task_a", "task_b"]), "circuit overlap (Jaccard)"))
    if "firing" in tables and len(tables["firing"]):
        _show(_frame_table(tables["firing"].set_index(["task", "group"]), "firing frequency: circuit neurons vs rest"))
    _save(store, lm, {"command": "compare", "tasks": names, "prune": prune, "sparsity": sparsity, "discover": cfg},
          tables, time.perf_counter() - start)

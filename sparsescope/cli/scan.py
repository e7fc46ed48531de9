"""`sparsescope scan`, `report` and `runs`: record a run, summarise it, list the store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import (
    app, console, out, RUNS_DIR, MODEL, friendly, split_list, parse_layers, token_progress, load,
)
from sparsescope.errors import UserError


@app.command()
@friendly
def scan(
    model: str = MODEL,
    suites: Optional[str] = typer.Option(None, help="Comma-separated bundled suite names or files (default: all)."),
    sites: Optional[str] = typer.Option(None, help="Sites, e.g. mlp.hook_post,blocks.3.hook_resid_post (default: all)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,5,10-12 (default: all)."),
    metrics: Optional[str] = typer.Option(None, help="Metrics, e.g. hoyer,near_zero_frac@0.1 (default: all)."),
    ladders: Optional[str] = typer.Option(None, help="Corruption ladders over the prose suite (levels 0/10/25/50/100), "
                                          "e.g. shuffle,replace,char_noise,base64."),
    seed: int = typer.Option(0, help="Seed of generated suites and ladders."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    max_tokens: int = typer.Option(256, help="Truncate prompts to this many tokens."),
    resume: Optional[str] = typer.Option(None, help="Finish an interrupted run: its id, or 'last'."),
    report: bool = typer.Option(True, help="Write the HTML report when done."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record per-layer, per-site sparsity over ID and OOD prompt suites and store it as a run."""
    from sparsescope import __version__
    from sparsescope.probes import CORRUPTIONS, DEFAULT_SUITES, ladder_spec, load_suites
    from sparsescope.record import RecordConfig, Recorder
    from sparsescope.record.recorder import part_key
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    store.check_writable()
    if resume:
        run = store.latest(kind="scan", status="incomplete") if resume == "last" else store.open(resume)
        if run is None:
            raise UserError("no interrupted scan to resume; start a new one without --resume")
        if run.status == "complete":
            raise UserError(f"run {run.run_id} is already complete; `sparsescope report {run.run_id}` shows it")
        cfg = run.manifest.get("config")
        if not cfg:
            raise UserError(f"run {run.run_id} has no readable manifest to resume from; start a new scan")
        model, suites, sites, layers, metrics = (cfg["model"], ",".join(cfg["suites"]), cfg["sites"], cfg["layers"],
                                                 cfg["metrics"])
        batch_size, max_tokens = cfg["batch_size"], cfg["max_tokens"]
        ladders, seed = cfg.get("ladders"), cfg.get("seed", 0)
    names = split_list(suites) or list(DEFAULT_SUITES)
    corruptions = split_list(ladders) or []
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown ladder {unknown[0]!r}; choose from {','.join(CORRUPTIONS)}")
    config = RecordConfig(sites=split_list(sites), layers=parse_layers(layers), metrics=metrics,
                          batch_size=batch_size, max_tokens=max_tokens)
    lm = load(model)
    recorder = Recorder(lm, config)  # validates sites/layers/metrics before anything is written
    suite_objs = load_suites(names + [f"ladder:{c}" for c in corruptions], tokenizer=lm.tokenizer, seed=seed)
    if not resume:
        prose = load_suites(["prose"], tokenizer=lm.tokenizer, seed=seed)[0] if corruptions else None
        manifest = {"kind": "scan", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                    "suites": names, "package_version": __version__, "seed": seed,
                    "ladders": {c: ladder_spec(prose, c, seed=seed, tokenizer=lm.tokenizer) for c in corruptions},
                    "config": {"model": model, "suites": names, "sites": sites, "layers": layers, "metrics": metrics,
                               "ladders": ladders, "seed": seed, "batch_size": batch_size, "max_tokens": max_tokens},
                    "suite_sources": {s.name: {"source": s.source, "license": s.license} for s in suite_objs}}
        run = store.create(manifest, run_id=None)
    done = run.done_parts()
    todo = [s for s in suite_objs if part_key(s) not in done]
    total = sum(len(i) for s in todo for i in recorder.tokenize([p.text for p in s.prompts]))
    console.print(f"run [bold]{run.run_id}[/]: {len(recorder.targets)} sites × {len(recorder.metrics)} metrics, "
                  f"{len(todo)} suites to record ({len(done)} already done), {total} tokens")
    start = time.perf_counter()
    with token_progress(total, "scan") as bar:
        task = bar.add_task("scan", total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            done_tok = bar.tasks[task].completed
            bar.update(task, rate=f"{done_tok / max(time.perf_counter() - start, 1e-9):.0f} tok/s")

        try:
            recorder.run(todo, run_id=run.run_id, progress=advance, on_suite=lambda key, part: run.write_part(
                key, {"activations": part.activations, "prompts": part.prompts, "neurons": part.neurons}))
        except BaseException as e:  # Ctrl-C or a failure: keep the finished suites, say how to resume
            run.mark_incomplete(f"interrupted: {type(e).__name__}")
            raise
    seconds = time.perf_counter() - start
    run.manifest["throughput"] = {"tokens": total, "seconds": round(seconds, 3),
                                  "tokens_per_s": round(total / max(seconds, 1e-9), 1)}
    run.finalize()
    console.print(f"recorded {total} tokens in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} tok/s) → {run.path}")
    _report(run, html=report)


def _report(run, html: bool = True, metric: str = "hoyer") -> None:
    from sparsescope.report import print_stats, print_summary, statistics, summary_table, write_html

    acts = run.read("activations")
    print_summary(summary_table(acts, metric=metric), out, title=f"{run.run_id}: {metric}, ID vs OOD per layer")
    stats = {}
    if "prompts" in run.manifest.get("tables", {}):
        with console.status("statistics over prompts (bootstrap CIs, trends, detector)"):
            stats = statistics(run.read("prompts"))
        for name in ("effects", "trends", "detector"):
            if name in stats:
                run.write_table(name, stats[name].drop(columns=["fpr", "tpr"], errors="ignore"))
        print_stats(stats, out)
    if run.manifest.get("weights_note"):
        out.print(f"note: {run.manifest['weights_note']}")
    if html:
        path = write_html(run, metric=metric, stats=stats)
        out.print(f"report: {path}")


@app.command()
@friendly
def report(
    run_id: str = typer.Argument("last", help="Run id (prefix) or 'last'."),
    metric: str = typer.Option("hoyer", help="Metric for the summary table."),
    html: bool = typer.Option(True, help="Also write the self-contained HTML report."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Print the ID vs OOD summary of a run and write its HTML report."""
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    run = store.latest(status="complete") if run_id == "last" else store.open(run_id)
    if run is None:
        raise UserError("no complete runs yet; run `sparsescope scan` first")
    _report(run, html=html, metric=metric)


@app.command()
@friendly
def runs(runs_dir: Optional[Path] = RUNS_DIR):
    """List runs with their status (complete; running = a live process writes it; incomplete = resumable or damaged)."""
    from rich.table import Table

    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    df = store.list()
    if df.empty:
        out.print(f"no runs in {store.root}; run `sparsescope scan`")
        return
    table = Table("run_id", "kind", "status", "created", "rows", title=f"runs in {store.root}")
    counts = df.filter(regex="^n_").fillna(0).sum(axis=1).astype(int)
    for row, n in zip(df.itertuples(index=False), counts):
        table.add_row(row.run_id, str(row.kind), str(row.status), str(row.created)[:19], str(n))
    out.print(table, soft_wrap=True)

"""`sparsescope scan`, `report` and `runs`: record a run, summarise it, list the store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import DEVICE, DTYPE, RUNS_DIR, MODEL, Bar, app, console, friendly, load, out


@app.command()
@friendly
def scan(
    model: str = MODEL,
    suites: Optional[str] = typer.Option(None, help="Comma-separated bundled suite names or files (default: all); "
                                         "difficulty:addition / difficulty:list_ops add difficulty ladders."),
    sites: Optional[str] = typer.Option(None, help="Sites, e.g. mlp.hook_post,blocks.3.hook_resid_post "
                                        "(default: all)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,5,10-12 (default: all)."),
    metrics: Optional[str] = typer.Option(None, help="Metrics, e.g. hoyer,near_zero_frac@0.1 (default: all)."),
    ladders: Optional[str] = typer.Option(None, help="Corruption ladders over the prose suite (levels 0/10/25/50/100), "
                                          "e.g. shuffle,replace,char_noise,base64."),
    seed: int = typer.Option(0, help="Seed of generated suites and ladders."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    max_tokens: int = typer.Option(256, help="Truncate prompts to this many tokens."),
    window: int = typer.Option(32, help="Tokens per prompt that count, at the same positions for every prompt "
                               "(after position 0 and a suite-wide shared prefix); shorter prompts are left out."),
    unmatched: bool = typer.Option(False, "--unmatched", help="Count every token of whole prompts instead (the "
                                   "UNMATCHED view: prompt length and position confound ID vs OOD)."),
    token_budget: Optional[int] = typer.Option(None, help="At most this many padded tokens per forward pass "
                                               "(prompts are grouped by length; results do not change)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = typer.Option(None, help="Spread a model too big for one device: 'auto' (accelerate: "
                                             "GPUs, then CPU, then disk) or JSON {module: device|'cpu'|'disk'}."),
    backend: str = typer.Option("hooks", help="hooks (torch hooks) or nnsight (statistics reduced inside an "
                                "nnsight trace: the same numbers)."),
    remote: bool = typer.Option(False, "--remote", help="With --backend nnsight: run on NDIF (needs NDIF_API_KEY; "
                                "--model a hub id NDIF serves); only reduced statistics are downloaded."),
    resume: Optional[str] = typer.Option(None, help="Finish an interrupted run: its id, or 'last'."),
    report: bool = typer.Option(True, help="Write the HTML report when done."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record per-layer, per-site sparsity over ID and OOD prompt suites and store it as a run."""
    from sparsescope import workflows
    from sparsescope.store import RunStore

    opts = workflows.ScanOptions(model, suites, sites, layers, metrics, ladders, seed, batch_size, max_tokens,
                                 0 if unmatched else window, token_budget=token_budget, device=device, dtype=dtype,
                                 device_map=device_map, backend=backend, remote=remote)
    with Bar("scan", "tok") as bar:
        run = workflows.scan(RunStore(runs_dir), opts, resume, load=load, announce=console.print, progress=bar)
    console.print(f"recorded in {bar.elapsed:.1f} s → {run.path}")
    _report(run, html=report)


def _report(run, html: bool = True, metric: str | None = None) -> None:
    """Print a scan's summary (and statistics, when it has prompts) and write its report (`scan` and `report`)."""
    from sparsescope import workflows
    from sparsescope.show.terminal import print_stats, print_summary

    with console.status("statistics over prompts (bootstrap CIs, trends, detector)"):
        rep = workflows.report(run, metric=metric, html=html)
    if rep.summary is None:
        out.print(f"{run.run_id}: no ID vs OOD summary (the run has no ID or OOD suite); the report shows its ladders")
    else:
        print_summary(rep.summary, out, title=f"{run.run_id}: {rep.metric}, ID vs OOD per layer")
    print_stats(rep.stats, out)
    if run.manifest.get("weights_note"):
        out.print(f"note: {run.manifest['weights_note']}")
    if rep.html:
        out.print(f"report: {rep.html}")


@app.command()
@friendly
def report(
    run_id: str = typer.Argument("last", help="Run id (prefix) or 'last'."),
    metric: Optional[str] = typer.Option(None, help="Metric for the summary table (default: hoyer, or the run's "
                                                 "first metric)."),
    html: bool = typer.Option(True, help="Also write the self-contained HTML report."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Print the ID vs OOD summary of a scan run ('last': the newest complete scan) and write its HTML report."""
    from sparsescope.store import RunStore
    from sparsescope.workflows import open_run

    _report(open_run(RunStore(runs_dir), run_id), html=html, metric=metric)


@app.command()
@friendly
def runs(runs_dir: Optional[Path] = RUNS_DIR):
    """List runs with their status (complete; running = a live process writes it; incomplete = resumable or damaged)."""
    from sparsescope.show.terminal import print_runs
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    df = store.list()
    if df.empty:
        out.print(f"no runs in {store.root}; run `sparsescope scan`")
        return
    print_runs(df, store.root, out)

"""The ``sparsescope`` command line: thin typer commands over the library, one-line errors, progress bars."""

from __future__ import annotations

import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsescope.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Record, explain and harvest sparsity in transformer language models.")
console = Console(stderr=True)
out = Console()

RUNS_DIR = typer.Option(None, "--runs-dir", envvar="SPARSESCOPE_RUNS", help="Run store root (default ./runs).")
MODEL = typer.Option("smollm2-135m", "--model", "-m", help="Embedded name, local HF directory or hub id.")


def friendly(fn):
    """Turn user errors and Ctrl-C into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = lambda msg, *a, **k: console.print(f"[yellow]warning:[/] {msg}")
                return fn(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]: finished parts are saved; resume with the same command plus --resume")
            raise typer.Exit(130) from None
        except PermissionError as e:
            console.print(f"[red]error:[/] permission denied: {e.filename}; pass --runs-dir to a writable folder")
            raise typer.Exit(2) from None

    return wrapper


def split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_layers(value: Optional[str]) -> Optional[list[int]]:
    """``"0,5,10-12"`` → ``[0, 5, 10, 11, 12]``."""
    if not value:
        return None
    layers = []
    try:
        for part in value.split(","):
            lo, _, hi = part.partition("-")
            layers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UserError(f"bad --layers {value!r}; write e.g. 0,5,10-12") from None
    return layers


def token_progress(total: int, label: str) -> Progress:
    """A progress bar counting tokens, with tokens/s."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("tok"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def load(spec: str):
    from sparsescope.models import load_model

    with console.status(f"loading {spec}"):
        return load_model(spec, progress=lambda m: console.print(m))


@app.command()
@friendly
def scan(
    model: str = MODEL,
    suites: Optional[str] = typer.Option(None, help="Comma-separated bundled suite names or files (default: all)."),
    sites: Optional[str] = typer.Option(None, help="Sites, e.g. mlp.hook_post,blocks.3.hook_resid_post (default: all)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,5,10-12 (default: all)."),
    metrics: Optional[str] = typer.Option(None, help="Metrics, e.g. hoyer,near_zero_frac@0.1 (default: all)."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    max_tokens: int = typer.Option(256, help="Truncate prompts to this many tokens."),
    resume: Optional[str] = typer.Option(None, help="Finish an interrupted run: its id, or 'last'."),
    report: bool = typer.Option(True, help="Write the HTML report when done."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record per-layer, per-site sparsity over ID and OOD prompt suites and store it as a run."""
    from sparsescope import __version__
    from sparsescope.probes import DEFAULT_SUITES, load_suites
    from sparsescope.record import RecordConfig, Recorder
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
    names = split_list(suites) or list(DEFAULT_SUITES)
    config = RecordConfig(sites=split_list(sites), layers=parse_layers(layers), metrics=metrics,
                          batch_size=batch_size, max_tokens=max_tokens)
    lm = load(model)
    recorder = Recorder(lm, config)  # validates sites/layers/metrics before anything is written
    suite_objs = load_suites(names, tokenizer=lm.tokenizer)
    if not resume:
        manifest = {"kind": "scan", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                    "suites": names, "package_version": __version__,
                    "config": {"model": model, "suites": names, "sites": sites, "layers": layers, "metrics": metrics,
                               "batch_size": batch_size, "max_tokens": max_tokens},
                    "suite_sources": {s.name: {"source": s.source, "license": s.license} for s in suite_objs}}
        run = store.create(manifest, run_id=None)
    done = run.done_parts()
    todo = [s for s in suite_objs if s.name not in done]
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

        recorder.run(todo, run_id=run.run_id, progress=advance,
                     on_suite=lambda name, part: run.write_part(name, {"activations": part.activations,
                                                                       "prompts": part.prompts,
                                                                       "neurons": part.neurons}))
    run.finalize()
    console.print(f"recorded in {time.perf_counter() - start:.1f} s → {run.path}")
    _report(run, html=report)


def _report(run, html: bool = True, metric: str = "hoyer") -> None:
    from sparsescope.report import print_summary, summary_table, write_html

    acts = run.read("activations")
    print_summary(summary_table(acts, metric=metric), out, title=f"{run.run_id}: {metric}, ID vs OOD per layer")
    if run.manifest.get("weights_note"):
        out.print(f"note: {run.manifest['weights_note']}")
    if html:
        path = write_html(run, metric=metric)
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

    df = RunStore(runs_dir).list()
    if df.empty:
        out.print("no runs yet; run `sparsescope scan`")
        return
    table = Table(*[str(c) for c in df.columns])
    for row in df.itertuples(index=False):
        table.add_row(*[str(v) for v in row])
    out.print(table)


@app.command()
@friendly
def models():
    """List the embedded models, whether their package is installed and whether their cache is built."""
    from rich.table import Table

    from sparsescope.models import available_models

    table = Table("name", "title", "installed", "cached", "cache dir / install")
    for m in available_models():
        table.add_row(m["name"], m["title"], str(m["installed"]), str(m["cached"]),
                      m["cache_dir"] if m["installed"] else m["install"])
    out.print(table)
    out.print("Also accepted by --model: a local Hugging Face model directory, or a hub id when the hub is reachable.")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

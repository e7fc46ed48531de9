"""What every ``sparsescope`` command shares: the typer app, consoles, common options, one-line errors, progress."""

from __future__ import annotations

import functools
import time
import warnings

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
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto (a GPU when one is visible).")
DTYPE = typer.Option("float32", "--dtype", help="Weights: float32, bfloat16 or float16 (statistics stay float64).")


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
            console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]: finished parts are saved; resume with the same command plus --resume")
            raise typer.Exit(130) from None
        except PermissionError as e:
            console.print(f"[red]error:[/] permission denied: {e.filename}; pass --runs-dir to a writable folder",
                          soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


class Bar:
    """The CLI's one progress bar: units counted (tokens or evaluations), a note (token rate or the last step), ETA.

    It is the workflows' ``progress(n, total, note)``; the live display starts on the first call, so the
    model-loading spinner before it runs alone. ``elapsed`` is the time since that first call.
    """

    def __init__(self, label: str, unit: str, transient: bool = False):
        self.label, self.unit, self.task, self.start = label, unit, None, 0.0
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=transient)

    def __call__(self, n: int, total: int, note: str = "") -> None:
        if self.task is None:
            self.progress.start()
            self.task, self.start = self.progress.add_task(self.label, total=total, note=""), time.perf_counter()
        self.progress.advance(self.task, n)
        if self.unit == "tok":
            note = f"{self.progress.tasks[self.task].completed / max(self.elapsed, 1e-9):.0f} tok/s"
        self.progress.update(self.task, note=note)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start if self.task is not None else 0.0

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def load(spec: str, **placement):
    """``load_model`` behind a spinner; ``placement`` = device, dtype, device_map."""
    from sparsescope.models import load_model

    with console.status(f"loading {spec}"):
        return load_model(spec, progress=lambda m: console.print(m), **placement)


def note(weights_note: str) -> None:
    """Print the model's weights note (e.g. dequantised from GGUF), when there is one."""
    if weights_note:
        out.print(f"[bold yellow]note: {weights_note}[/]", highlight=False)


def show(table) -> None:
    """Print a table; a log or pipe (not a terminal) gets every column in full instead of 80 columns."""
    (out if out.is_terminal else Console(width=160)).print(table)

"""What every ``sparsescope`` command shares: the typer app, consoles, common options, one-line errors, progress."""

from __future__ import annotations

import functools
import warnings
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


def _floats(value: str, option: str) -> list[float]:
    """``"0.25,0.5"`` → ``[0.25, 0.5]``; one line naming the option otherwise."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {value!r}; write numbers separated by commas, e.g. 0.25,0.5") from None


def _evaluations(total: int, label: str) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
                    TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _note(lm) -> None:
    if lm.weights_note:
        out.print(f"[bold yellow]note: {lm.weights_note}[/]", highlight=False)


def _show(table) -> None:
    """Print a table; a log or pipe (not a terminal) gets every column in full instead of 80 columns."""
    (out if out.is_terminal else Console(width=160)).print(table)


def _frame_table(df, title: str):
    """A rich table of a small frame (index as the first columns), numbers to 4 significant digits."""
    from rich.table import Table

    df = df.reset_index()
    table = Table(*[str(c) for c in df.columns], title=title)
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    return table

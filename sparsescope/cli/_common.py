"""What every ``sparsescope`` command shares: the typer app, consoles, common options, one-line errors, progress."""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typer.core import TyperGroup

from sparsescope.errors import UserError

console = Console(stderr=True)


class OneLineUsageErrors(TyperGroup):
    """Usage errors (an unknown option, a value of the wrong type) as one `error:` line too, exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            console.print("[red]interrupted:[/] aborted", highlight=False)
            sys.exit(1)
        except Exception as e:  # typer's (vendored) click exceptions, recognised as typer itself does
            if not hasattr(e, "format_message") or not hasattr(e, "exit_code"):
                raise
            if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                ctx = getattr(e, "ctx", None)
                see = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
                console.print(f"[red]error:[/] {escape(e.format_message().rstrip('.'))}{see}", highlight=False,
                              soft_wrap=True)
            sys.exit(e.exit_code)
        sys.exit(code or 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineUsageErrors,
                  help="Record, explain and harvest sparsity in transformer language models.")
out = Console()

RUNS_DIR = typer.Option(None, "--runs-dir", envvar="SPARSESCOPE_RUNS", help="Run store root (default ./runs).")
MODEL = typer.Option("smollm2-135m", "--model", "-m", help="Embedded name, local HF directory or hub id.")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto (a GPU when one is visible).")
DTYPE = typer.Option("float32", "--dtype", help="Weights: float32, bfloat16 or float16 (statistics stay float64).")


def friendly(fn):
    """One line on stderr and a non-zero exit for every failure, never a traceback.

    User errors exit 2; Ctrl-C exits 130; anything unexpected (a bug, a full disk) exits 1 with the path of a log
    holding the full traceback. Runs this command claimed and did not finish are marked incomplete, and the line
    says how to resume them. User text in messages is escaped, so '[draft]' in a path is printed as written.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sparsescope.store import claims

        since = claims()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _warn
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as e:
            _fail(2, str(e), since, "stopped")
        except KeyboardInterrupt:
            _fail(130, "", since, "interrupted", label="interrupted")
        except PermissionError as e:
            _fail(2, f"permission denied: {e.filename}; pass --runs-dir to a writable folder", since, "stopped")
        except Exception as e:  # noqa: BLE001 — the top level: a bug or a failing environment, never a traceback
            what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
            log = _write_log(kwargs.get("runs_dir"))
            _fail(1, f"{type(e).__name__}: {what.strip().splitlines()[0] if what.strip() else 'no message'} "
                     f"(full traceback: {log})", since, f"failed: {type(e).__name__}")

    return wrapper


def _warn(message, *args, **kwargs) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _fail(code: int, message: str, since: int, reason: str, label: str = "error") -> None:
    """Print ``message`` and what became of the runs this command claimed, as one line, and exit ``code``."""
    from sparsescope.store import claimed_runs

    notes = []
    for run in claimed_runs(since):
        if run.status == "complete":
            continue
        run.mark_incomplete(reason)
        done = run.done_parts()
        notes.append(f"run {run.run_id} keeps {len(done)} finished part(s); {run.next_step()}" if done else
                     f"run {run.run_id} finished nothing and is marked incomplete")
    if label == "interrupted" and not notes:
        notes.append("nothing was saved")
    line = "; ".join(x for x in [message, *notes] if x)
    console.print(f"[red]{label}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _write_log(runs_dir) -> str:
    """Write the current exception's traceback to a log file; its path, or why none could be written."""
    import datetime
    import os
    import sys
    import traceback

    from platformdirs import user_log_dir

    from sparsescope import __version__

    root = Path(runs_dir or os.environ.get("SPARSESCOPE_RUNS") or "runs")
    folders = [root / ".logs"] if root.is_dir() else []
    folders += [Path(user_log_dir("sparsescope")), Path(tempfile.gettempdir())]
    name = f"sparsescope-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    text = f"sparsescope {__version__}\ncommand: {' '.join(sys.argv)}\n\n{traceback.format_exc()}"
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return str(folder / name)
        except OSError:
            continue
    return "none: no folder was writable"


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

    with console.status(f"loading {escape(spec)}"):
        return load_model(spec, progress=lambda m: console.print(m), **placement)


def note(weights_note: str) -> None:
    """Print the model's weights note (e.g. dequantised from GGUF), when there is one."""
    if weights_note:
        out.print(f"[bold yellow]note: {weights_note}[/]", highlight=False)


def show(table) -> None:
    """Print a table; a log or pipe (not a terminal) gets every column in full instead of 80 columns."""
    (out if out.is_terminal else Console(width=160)).print(table)

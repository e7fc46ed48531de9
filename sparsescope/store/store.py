"""The runs folder: create, find and list runs (`runs/<run_id>/`), each a `RunDir`."""

from __future__ import annotations

import difflib
import importlib.metadata
import itertools
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .run import RunDir, now

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]*")


def _slug(text: str) -> str:
    """'HuggingFaceTB/SmolLM2-135M' -> 'smollm2-135m': the readable tail of a model name or path."""
    tail = re.split(r"[\\/]", str(text).rstrip("/\\"))[-1]
    return re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:40] or "run"


def _package_version() -> str:
    try:
        return importlib.metadata.version("sparsescope")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # running from a source tree that was never installed


class RunStore:
    """Runs under `root` (default: $SPARSESCOPE_RUNS, else ./runs), one folder per run."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root if root is not None else os.environ.get("SPARSESCOPE_RUNS") or "runs")

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def _check_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"runs directory {self.root} is a file, not a folder; pass --runs-dir to a folder "
                            "(or set SPARSESCOPE_RUNS)")

    def check_writable(self) -> None:
        """Fail early, before any work, if runs cannot be written under `root`."""
        self._check_folder()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise UserError(f"runs directory {self.root} is not writable ({e.strerror or e}); "
                            "pass --runs-dir to a writable folder or set SPARSESCOPE_RUNS") from None

    def create(self, manifest: dict, run_id: str | None = None) -> RunDir:
        """Start a run: claim a fresh folder (id like 20261123-091500-smollm2-135m-scan) and write its manifest."""
        self.check_writable()
        kind, model = manifest.get("kind", "scan"), manifest.get("model", "model")
        if run_id is not None and not RUN_ID.fullmatch(run_id):
            raise UserError(f"run id {run_id!r} is not a plain folder name; use letters, digits and . _ @ + = -")
        base = run_id or f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(model)}-{_slug(kind)}"
        for n in itertools.count(1):
            name = base if n == 1 else f"{base}-{n}"
            try:
                (self.root / name).mkdir()
                break
            except FileExistsError:
                if run_id is not None:
                    raise UserError(f"run {run_id} already exists in {self.root}; pick another id "
                                    f"or resume it with `sparsescope {kind} --resume {run_id}`") from None
        run = RunDir(self.root / name).lock()
        defaults = {"run_id": name, "kind": kind, "model": model, "model_revision": None, "suites": [],
                    "config": {}, "package_version": _package_version()}
        fixed = {"run_id": name, "status": "running", "created": now(), "parts_done": {}, "tables": {}}
        run.manifest = defaults | manifest | fixed
        run._set_running()
        run._save()
        return run

    def runs(self) -> list[RunDir]:
        """All run folders, oldest first."""
        self._check_folder()
        if not self.root.is_dir():
            return []
        runs = [RunDir(p) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(runs, key=lambda r: (str(r.manifest.get("created", "")), r.run_id))

    def open(self, run_id: str) -> RunDir:
        """The run with this id, or with this unique id prefix."""
        ids = [r.run_id for r in self.runs()]
        if run_id in ids:
            return RunDir(self.root / run_id)
        matches = [i for i in ids if i.startswith(run_id)]
        if len(matches) == 1:
            return RunDir(self.root / matches[0])
        if matches:
            raise UserError(f"run id '{run_id}' matches {len(matches)} runs ({', '.join(matches[-5:])}); "
                            "give more of the id")
        close = difflib.get_close_matches(run_id, ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"no run '{run_id}' in {self.root}{hint}; list runs with `sparsescope runs`")

    def latest(self, kind: str | None = None, status: str | None = None) -> RunDir | None:
        """The newest run, optionally of one kind ('scan') and status ('complete'); None if there is none."""
        for run in reversed(self.runs()):
            if (kind is None or run.kind == kind) and (status is None or run.status == status):
                return run
        return None

    def list(self) -> pd.DataFrame:
        """One row per run: run_id, kind, model, status, created, n_<table> (rows per table), path."""
        rows = []
        for run in self.runs():
            m = run.manifest
            rows.append({"run_id": run.run_id, "kind": m.get("kind"), "model": m.get("model"),
                         "status": run.status, "created": m.get("created")}
                        | {f"n_{name}": n for name, n in run.n_rows().items()}
                        | {"path": str(run.path)})
        df = pd.DataFrame(rows)
        counts = sorted(c for c in df.columns if c.startswith("n_"))
        columns = ["run_id", "kind", "model", "status", "created", *counts, "path"]
        return df.reindex(columns=columns).astype({c: "Int64" for c in counts})

    def remove(self, run_id: str) -> None:
        """Delete a run folder."""
        shutil.rmtree(self.open(run_id).path)

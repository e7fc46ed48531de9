"""One run on disk: `manifest.json`, finished parts under `parts/`, and one Parquet file per table.

A part is done only once the manifest lists it, and the manifest is rewritten atomically after the part's files,
so a crash at any point leaves a run that resumes from its done parts and is never read as complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .atomic import TMP_SUFFIX, atomic_write_parquet, atomic_write_text

MANIFEST = "manifest.json"
PARTS = "parts"
LOCK = ".lock"
# Manifest fields the code reads, with their JSON types: a hand-edited or foreign manifest with another type is
# reported as damaged (one line) instead of failing somewhere later.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "parts_done": (dict,), "tables": (dict,), "kind": (str,), "model": (str,), "created": (str,),
    "config": (dict,), "suites": (list,), "pid": (int,), "host": (str,), "reason": (str,), "weights_note": (str,),
}
_HELD: dict[Path, int] = {}  # run folder → file descriptor of the lock this process holds on it
_CLAIMED: list[Path] = []  # every run folder this process locked, in order (what a failure may have left behind)


def claims() -> int:
    """How many runs this process has claimed so far: pass it to :func:`claimed_runs` later."""
    return len(_CLAIMED)


def claimed_runs(since: int = 0) -> list["RunDir"]:
    """The runs this process locked for writing after ``claims()`` returned ``since`` (created or resumed)."""
    return [RunDir(p) for p in dict.fromkeys(_CLAIMED[since:])]


def now() -> str:
    """Local time, ISO 8601 with offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_table_name(name: str) -> None:
    # Table names become file names and DuckDB view names.
    if not name.isidentifier():
        raise ValueError(f"table name {name!r} must be a Python/SQL identifier such as 'activations'")


class RunDir:
    """A run folder: its manifest, its parts (for resuming) and its final tables."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.manifest, self.manifest_problem = self._load_manifest()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, status={self.status!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    def _load_manifest(self) -> tuple[dict, str | None]:
        fallback = {"run_id": self.run_id, "status": "incomplete", "parts_done": {}, "tables": {}}
        try:
            manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return fallback, f"{MANIFEST} is missing"
        except (OSError, ValueError) as e:
            return fallback, f"{MANIFEST} is unreadable ({type(e).__name__})"
        if not isinstance(manifest, dict) or "status" not in manifest:
            return fallback, f"{MANIFEST} is corrupt (no status)"
        manifest.setdefault("parts_done", {})
        manifest.setdefault("tables", {})
        for key, types in FIELD_TYPES.items():
            value = manifest.get(key)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                return fallback, f"{MANIFEST} is corrupt ('{key}' is a {type(value).__name__})"
        counts = [*manifest["tables"].values(), *(n for t in manifest["parts_done"].values()
                                                  for n in (t.values() if isinstance(t, dict) else [None]))]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            return fallback, f"{MANIFEST} is corrupt (row counts of tables or parts are not integers)"
        return manifest, None

    # -- the writer's lock --------------------------------------------------------------------------------------
    def lock(self) -> "RunDir":
        """Claim this run for writing by this process, or raise UserError naming the process that writes it.

        An OS lock (``flock``) on ``.lock`` in the run folder: the kernel drops it when its process dies, however
        it dies, so a lock left by a killed run never blocks a later resume. Held until :meth:`unlock`,
        :meth:`finalize` or :meth:`mark_incomplete`; every write takes it for its own duration when not held.
        Taking it re-reads the manifest, since the last writer may have changed it since this object read it.
        """
        key = self.path.resolve()
        if key in _HELD:
            return self
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"run {self.run_id} is being written by {holder}; wait for it to finish "
                            "(or stop it) before resuming or changing this run") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        _HELD[key] = fd
        _CLAIMED.append(key)
        if (self.path / MANIFEST).exists():
            self.manifest, self.manifest_problem = self._load_manifest()
        return self

    def unlock(self) -> None:
        """Release this process's lock on the run (the lock file stays: deleting it could let two writers in)."""
        fd = _HELD.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def locked(self) -> bool:
        """Whether this process holds the run's lock."""
        return self.path.resolve() in _HELD

    @contextmanager
    def _writing(self):
        """Hold the lock for one write: the caller's lock if it has one, else a lock taken just for this write."""
        held = self.locked
        self.lock()
        try:
            yield
        finally:
            if not held:
                self.unlock()

    def _save(self) -> None:
        self.manifest["updated"] = now()
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2, default=str) + "\n")
        self.manifest_problem = None

    def _set_running(self) -> None:
        self.manifest.update(status="running", pid=os.getpid(), host=socket.gethostname())
        self.manifest.pop("reason", None)

    # -- state ------------------------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why this run cannot be read as complete (manifest, status or a table file), or None if it can."""
        if self.manifest_problem:
            return self.manifest_problem
        status = self.manifest["status"]
        if status != "complete":
            reason = self.manifest.get("reason")
            if status == "running" and not self._writer_alive():
                reason = reason or "its process is gone"
            return f"it was left {status}" + (f" ({reason})" if reason else "")
        for name in self.manifest["tables"]:
            file = self.path / f"{name}.parquet"
            if not file.exists():
                return f"{file.name} is missing"
            try:
                pq.read_metadata(file)
            except (pa.ArrowException, OSError):
                return f"{file.name} is unreadable"
        return None

    def _writer_alive(self) -> bool:
        # A run marked running whose process died on this host was killed: report it as incomplete.
        pid, host = self.manifest.get("pid"), self.manifest.get("host")
        return not (isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid))

    @property
    def status(self) -> str:
        """'complete' (readable), 'running' (a live writer) or 'incomplete' (interrupted, failed or damaged)."""
        if self.manifest_problem:
            return "incomplete"
        status = self.manifest["status"]
        if status == "complete" and self.problem():
            return "incomplete"
        if status == "running" and not self._writer_alive():
            return "incomplete"
        return status

    def n_rows(self) -> dict[str, int]:
        """Rows per table: final tables where written, else the sum over done parts."""
        counts: dict[str, int] = {}
        for tables in self.manifest["parts_done"].values():
            for name, n in tables.items():
                counts[name] = counts.get(name, 0) + n
        return counts | self.manifest["tables"]

    # -- parts (resumable work) --------------------------------------------------------------------------------
    def _part_path(self, key: str, table: str) -> Path:
        return self.path / PARTS / f"{quote(key, safe='@')}.{table}.parquet"

    def write_part(self, key: str, tables: dict[str, pd.DataFrame]) -> None:
        """Write one unit of work (e.g. a suite) atomically; it counts as done once the manifest lists it."""
        for name in tables:
            _check_table_name(name)
        with self._writing():
            self._write_part(key, tables)

    def _write_part(self, key: str, tables: dict[str, pd.DataFrame]) -> None:
        self._set_running()
        if key in self.manifest["parts_done"]:
            # Forget the older version of this part before overwriting it, so old and new files never mix.
            del self.manifest["parts_done"][key]
            self._save()
        (self.path / PARTS).mkdir(exist_ok=True)
        for name, df in tables.items():
            atomic_write_parquet(self._part_path(key, name), df)
        self.manifest["parts_done"][key] = {name: len(df) for name, df in tables.items()}
        self._save()

    def done_parts(self) -> set[str]:
        """Keys of parts whose manifest entry and files all exist: a resumed run skips these."""
        return {
            key
            for key, tables in self.manifest["parts_done"].items()
            if all(self._part_path(key, name).exists() for name in tables)
        }

    def read_parts(self, table: str) -> pd.DataFrame:
        """Concatenate `table` over the done parts, in the order they were written."""
        done = self.done_parts()
        keys = [k for k, tables in self.manifest["parts_done"].items() if k in done and table in tables]
        if not keys:
            raise UserError(f"run {self.run_id} has no finished parts with a '{table}' table yet; "
                            f"{self.next_step()}")
        return pd.concat([pd.read_parquet(self._part_path(k, table)) for k in keys], ignore_index=True)

    def _part_tables(self) -> list[str]:
        done = self.done_parts()
        names = [n for k, tables in self.manifest["parts_done"].items() if k in done for n in tables]
        return list(dict.fromkeys(names))

    # -- final tables ------------------------------------------------------------------------------------------
    def finalize(self, tables: dict[str, pd.DataFrame] | None = None) -> None:
        """Write the final tables (default: each table concatenated over the parts) and mark the run complete."""
        with self._writing():
            if tables is None:
                tables = {name: self.read_parts(name) for name in self._part_tables()}
            for name, df in tables.items():
                _check_table_name(name)
                atomic_write_parquet(self.path / f"{name}.parquet", df)
            self.manifest["tables"] |= {name: len(df) for name, df in tables.items()}
            self.manifest["status"] = "complete"
            self.manifest.pop("reason", None)
            self._save()
            for leftover in [*self.path.glob(f".*{TMP_SUFFIX}"), *self.path.glob(f"{PARTS}/.*{TMP_SUFFIX}")]:
                leftover.unlink(missing_ok=True)  # temp files of writes a crash interrupted
        self.unlock()

    def mark_incomplete(self, reason: str) -> None:
        """Record that the run stopped before finishing (error, interrupt), keeping its done parts for a resume.

        Best effort: when even this write fails (a full disk), the manifest still says "running" for a dead
        process, which reads as incomplete too, so the failure that stopped the run is the one reported."""
        try:
            with self._writing():
                self.manifest["status"] = "incomplete"
                self.manifest["reason"] = reason
                self._save()
        except (OSError, UserError):  # UserError: another process writes the run now; its manifest is its own
            pass
        self.unlock()

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Add an extra table (e.g. a summary) to the run, atomically."""
        _check_table_name(name)
        with self._writing():
            path = atomic_write_parquet(self.path / f"{name}.parquet", df)
            self.manifest["tables"][name] = len(df)
            self._save()
        return path

    def write_file(self, name: str, text: str) -> Path:
        """Write a text file (e.g. the HTML report) into the run folder, atomically."""
        return atomic_write_text(self.path / name, text)

    def read(self, table: str, allow_incomplete: bool = False) -> pd.DataFrame:
        """Read a final table; a run that is not complete is refused unless `allow_incomplete` (then: done parts)."""
        problem = self.problem()
        if problem is None and table not in self.manifest["tables"]:
            have = ", ".join(self.manifest["tables"]) or "none"
            raise UserError(f"run {self.run_id} has no '{table}' table (it has: {have}); "
                            f"record it with a new `sparsescope {self.kind}`")
        status = self.status
        if problem is None:
            try:
                return pd.read_parquet(self.path / f"{table}.parquet")
            except (pa.ArrowException, OSError):
                problem, status = f"{table}.parquet is unreadable", "incomplete"
        if allow_incomplete:
            return self.read_parts(table)
        raise UserError(f"run {self.run_id} (status {status}) cannot be read: {problem}; "
                        f"{self.next_step()} or pick a complete run (`sparsescope runs`)")

    @property
    def kind(self) -> str:
        return self.manifest.get("kind") or "scan"

    def next_step(self) -> str:
        """How to finish this run: resume it when it has finished parts (scans write parts), else record it again."""
        if self.done_parts():
            return f"finish it with `sparsescope {self.kind} --resume {self.run_id}`"
        return f"record it again with `sparsescope {self.kind}`"

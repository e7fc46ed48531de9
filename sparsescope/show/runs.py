"""The run store as the explorer sees it: a catalogue of runs (complete or not) and tables of chosen runs.

Every read goes through `sparsescope.store` (`RunStore` for the catalogue, `query` — DuckDB over the complete
runs' Parquet files — for tables), so a half-written or damaged run is listed with its reason and never read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store import RunStore, query

CATALOG_COLUMNS = ["run_id", "kind", "model", "status", "created", "problem", "tables"]


def catalog(root: Path | str | None) -> pd.DataFrame:
    """One row per run folder, oldest first: run_id, kind, model, status, created, problem (None if readable),
    tables (names of its final tables). A missing runs folder is an empty catalogue."""
    rows = []
    for run in RunStore(root).runs():
        m = run.manifest
        rows.append({"run_id": run.run_id, "kind": run.kind, "model": m.get("model"), "status": run.status,
                     "created": str(m.get("created", "")), "problem": run.problem(),
                     "tables": tuple(m.get("tables", {}))})
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


def signature(root: Path | str | None) -> tuple:
    """Changes whenever a run is added, removed or rewritten: the cache key of everything read from `root`."""
    store = RunStore(root)
    if not store.root.is_dir():
        return ()
    out = []
    for path in sorted(store.root.iterdir()):
        manifest = path / "manifest.json"
        try:
            out.append((path.name, manifest.stat().st_mtime_ns))
        except OSError:
            out.append((path.name, 0))
    return tuple(out)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load(root: Path | str | None, table: str, run_ids: list[str] | tuple[str, ...], columns: str = "*",
         where: str = "") -> pd.DataFrame:
    """Rows of `table` from the given complete runs, with a `run_id` column (derived from the file when the table
    has none). Runs without the table are skipped; no run with it gives an empty frame.

    `columns` and `where` are SQL fragments written by the app itself (never user text).
    """
    store = RunStore(root)
    ok = {r.run_id: r for r in store.runs() if r.run_id in set(run_ids) and r.problem() is None
          and table in r.manifest["tables"]}
    if not ok:
        return pd.DataFrame()
    files = ", ".join(_sql_str(str((r.path / f"{table}.parquet").resolve())) for r in ok.values())
    sql = f'SELECT {columns}, filename FROM "{table}" WHERE filename IN ({files})'
    sql += f" AND ({where})" if where else ""
    df = query(sql, store.root)
    run_id = df.pop("filename").map(lambda f: Path(f).parent.name)
    if "run_id" not in df.columns:
        df.insert(0, "run_id", run_id)
    return df


def manifest(root: Path | str | None, run_id: str) -> dict:
    """The manifest of one run (as `RunStore.open` reads it)."""
    return RunStore(root).open(run_id).manifest


def run_file(root: Path | str | None, run_id: str, name: str) -> str | None:
    """The text of a file a run wrote into its folder (e.g. a plan's `plan.yaml`), or None if it has none."""
    path = RunStore(root).open(run_id).path / name
    return path.read_text(encoding="utf-8") if path.is_file() else None

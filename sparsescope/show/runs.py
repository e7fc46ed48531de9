"""The run store as the explorer sees it: a catalogue of runs (complete or not) and tables of chosen runs.

The catalogue comes from `sparsescope.store.RunStore`; tables are read with DuckDB from the chosen complete runs'
Parquet files only, so a half-written or damaged run is listed with its reason and never read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import duckdb

from ..store import RunDir, RunStore

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


def sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load(root: Path | str | None, table: str, run_ids: list[str] | tuple[str, ...], columns: str = "*",
         where: str = "", order: str = "") -> pd.DataFrame:
    """Rows of `table` from the given complete runs, with a `run_id` column (derived from the file when the table
    has none). Runs without the table are skipped; no run with it gives an empty frame.

    Only the chosen runs' files are read (DuckDB pushes `columns` and `where` into the Parquet scan), so a page
    pays for the rows and columns it draws, not for the store. `columns`, `where` and `order` are SQL fragments
    written by the app itself (never user text); aggregations go through `sql`.
    """
    files = _files(root, table, run_ids)
    if not files:
        return pd.DataFrame()
    columns = columns if columns.strip() == "*" else f"{columns}, filename"  # `*` holds filename already
    sql = f"SELECT {columns} FROM read_parquet([{', '.join(map(sql_str, files))}], " \
          "union_by_name = true, filename = true)"
    sql += f" WHERE {where}" if where else ""
    sql += f" ORDER BY {order}" if order else ""
    with duckdb.connect() as con:
        df = con.execute(sql).df()
    run_id = df.pop("filename").map(lambda f: Path(f).parent.name)
    if "run_id" not in df.columns:
        df.insert(0, "run_id", run_id)
    return df


def sql(root: Path | str | None, table: str, run_ids: list[str] | tuple[str, ...], select: str) -> pd.DataFrame:
    """Any query over the chosen runs' rows of `table`, seen as a view `t` (with `filename`): for aggregations
    (histograms, group-bys) computed in DuckDB so only their result reaches the page. Empty frame when no chosen
    run has the table. `select` is written by the app itself (never user text)."""
    files = _files(root, table, run_ids)
    if not files:
        return pd.DataFrame()
    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet([{', '.join(map(sql_str, files))}], "
                    "union_by_name = true, filename = true)")
        return con.execute(select).df()


def _files(root: Path | str | None, table: str, run_ids) -> list[str]:
    """The `table` files of the chosen runs that are complete and hold it (a damaged run is never read)."""
    store, files = RunStore(root), []
    for run_id in dict.fromkeys(run_ids):
        run = RunDir(store.root / run_id)
        if run.problem() is None and table in run.manifest["tables"]:
            files.append(str((run.path / f"{table}.parquet").resolve()))
    return files


def manifest(root: Path | str | None, run_id: str) -> dict:
    """The manifest of one run (as `RunStore.open` reads it)."""
    return RunStore(root).open(run_id).manifest


def run_file(root: Path | str | None, run_id: str, name: str) -> str | None:
    """The text of a file a run wrote into its folder (e.g. a plan's `plan.yaml`), or None if it has none."""
    path = RunStore(root).open(run_id).path / name
    return path.read_text(encoding="utf-8") if path.is_file() else None

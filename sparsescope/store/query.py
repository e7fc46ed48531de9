"""SQL across runs: DuckDB views named after the tables (`activations`, `prompts`, `neurons`, ...) of complete runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from ..errors import UserError
from .store import RunStore


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def query(sql: str, root: Path | str | None = None) -> pd.DataFrame:
    """Run `sql` over every complete run under `root`; each table is a view over all runs' `<table>.parquet`.

    Columns are unioned by name, and a `filename` column says which file a row came from.
    Incomplete, running or damaged runs are left out, so a query never sees half a run.
    """
    store = RunStore(root)
    files: dict[str, list[str]] = {}
    for run in store.runs():
        if run.problem() is None:
            for table in run.manifest["tables"]:
                files.setdefault(table, []).append(str((run.path / f"{table}.parquet").resolve()))
    if not files:
        raise UserError(f"no complete runs in {store.root}; record one with `sparsescope scan` "
                        "or point --runs-dir / SPARSESCOPE_RUNS at your runs folder")
    with duckdb.connect() as con:
        for table, paths in files.items():
            listing = ", ".join(map(_sql_str, paths))
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM '
                        f"read_parquet([{listing}], union_by_name = true, filename = true)")
        try:
            return con.execute(sql).df()
        except duckdb.Error as e:
            raise UserError(f"query failed: {str(e).splitlines()[0]}; tables you can query: "
                            f"{', '.join(sorted(files))}") from None

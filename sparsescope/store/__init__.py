"""Run store: one folder per run (manifest + Parquet tables), atomic writes, resumable parts, DuckDB across runs."""

from .atomic import atomic_write_bytes, atomic_write_parquet, atomic_write_text
from .query import query
from .run import RunDir, claimed_runs, claims
from .store import RunStore

__all__ = ["RunStore", "RunDir", "claimed_runs", "claims", "query", "atomic_write_bytes", "atomic_write_parquet",
           "atomic_write_text"]

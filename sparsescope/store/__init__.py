"""Run store: one folder per run (manifest + Parquet tables), atomic writes, resumable parts, DuckDB across runs."""

from .atomic import atomic_write_bytes, atomic_write_parquet, atomic_write_text
from .query import query
from .run import RunDir
from .store import RunStore

__all__ = ["RunStore", "RunDir", "query", "atomic_write_bytes", "atomic_write_parquet", "atomic_write_text"]

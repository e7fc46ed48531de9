"""Atomic file writes: a temp file in the target's folder, then `os.replace`: readers see old or new, never half."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pandas as pd

TMP_SUFFIX = ".tmp"


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:  # unlike mkstemp, honours the umask (files stay readable as usual)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: Path | str, df: pd.DataFrame) -> Path:
    """Write `df` (without its index) as Parquet to `path` atomically."""
    return _atomic_write(Path(path), lambda f: df.to_parquet(f, index=False))

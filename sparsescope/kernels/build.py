"""Compile a bundled C++ extension once and cache it; fall back (with one notice) where that is impossible.

``load("stats", ["stats.cpp"])`` builds ``sparsescope/kernels/csrc/stats.cpp`` with ``torch.utils.cpp_extension``
(ninja, ``-O3 -march=native``, OpenMP) into ``$SPARSESCOPE_CACHE/kernels/<name>-<hash>``. The hash covers the
sources, the flags and the torch version, so an edited kernel or a new torch rebuilds and an unchanged one loads in
well under a second. ``SPARSESCOPE_NO_KERNELS=1`` forces every caller onto its pure-torch fallback (tests use it
to prove fallback and kernel agree). Failures never raise: callers get ``None`` and the user one warning line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def kernels_dir() -> Path:
    """Where built extensions are cached: ``$SPARSESCOPE_CACHE/kernels`` or the user cache dir."""
    from sparsescope.models.loading import cache_root

    return cache_root().parent / "kernels"


def disabled() -> bool:
    """True when ``SPARSESCOPE_NO_KERNELS`` asks for the pure-torch fallbacks."""
    return os.environ.get("SPARSESCOPE_NO_KERNELS", "") not in ("", "0")


@functools.cache
def load(name: str, sources: tuple[str, ...], cflags: tuple[str, ...] = CFLAGS):
    """The compiled module for ``sources`` (file names under ``kernels/csrc``), or ``None`` with a notice.

    Cached per process (``functools.cache``) and on disk; ``sources`` must be a tuple so the call is hashable.
    """
    if disabled():
        return None
    why = _missing_tools()
    if why:
        warnings.warn(f"sparsescope kernels unavailable ({why}); using the slower pure-torch path", stacklevel=2)
        return None
    paths = [CSRC / s for s in sources]
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    digest.update(" ".join(cflags).encode() + torch.__version__.encode())
    build_dir = kernels_dir() / f"{name}-{digest.hexdigest()[:12]}"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _drop_stale_lock(build_dir)
        from torch.utils.cpp_extension import load as cpp_load

        return cpp_load(name=f"sparsescope_{name}", sources=[str(p) for p in paths], extra_cflags=list(cflags),
                        extra_ldflags=list(LDFLAGS), build_directory=str(build_dir), verbose=False)
    except Exception as e:  # a compiler error, a read-only cache, a broken toolchain: fall back, say why once
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"sparsescope kernel {name!r} could not be built ({first}); using the slower pure-torch "
                      f"path", stacklevel=2)
        return None


STALE_LOCK_S = 600  # a build takes ~45 s; a lock this old was left by a process killed mid-build


def _drop_stale_lock(build_dir: Path) -> None:
    """Remove the ``lock`` file torch's builder leaves when a process is killed mid-compile: every later build
    would otherwise wait on it forever."""
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            warnings.warn(f"removed a stale kernel build lock ({lock}) left by an interrupted build", stacklevel=3)
    except FileNotFoundError:
        pass


def _missing_tools() -> str:
    """Why a build cannot even start ('' when a C++ compiler and ninja are present)."""
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler on PATH; install g++"
    try:
        import ninja  # noqa: F401
    except ImportError:
        return "the ninja package is missing; pip install ninja"
    return ""

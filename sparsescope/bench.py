"""Side-by-side benchmarks that print ratios (never timed assertions): recording overhead, memory, load time.

Each comparison runs both sides in one process run, interleaved over repeats, and reports medians, so a noisy
shared machine affects both sides alike. Memory and load time are measured in fresh child processes, because a
process's peak RSS and import caches only go up.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from sparsescope.errors import UserError, check_whole
from sparsescope.models import load_model
from sparsescope.models.loading import EMBEDDED
from sparsescope.probes import load_suites
from sparsescope.record import RecordConfig, Recorder


def record_overhead(model: str = "smollm2-135m", suite: str = "prose", repeats: int = 3,
                    presets: dict[str, str | None] | None = None) -> dict:
    """Median time of a full recording vs a plain forward over the same batches; one ratio per metric preset."""
    check_whole(repeats, "repeats", 1, "medians need at least one repeat; pass e.g. --repeats 3")
    lm = load_model(model)
    s = load_suites([suite], tokenizer=lm.tokenizer)[0]
    presets = presets or {"all metrics": None, "no-sort metrics": "zero_frac,near_zero_frac,hoyer"}
    recorders = {name: Recorder(lm, RecordConfig(metrics=spec)) for name, spec in presets.items()}
    first = next(iter(recorders.values()))
    batches = [(x, m.long()) for _, x, m in first.batches(first.tokenize(s.texts))]
    n_tokens = sum(int(m.sum()) for _, m in batches)
    times: dict[str, list[float]] = {"plain forward": [], **{k: [] for k in recorders}}
    for x, m in batches[:1]:
        lm.forward(x, m)  # warm-up
    for _ in range(repeats):
        t = time.perf_counter()
        for x, m in batches:
            lm.forward(x, m)
        times["plain forward"].append(time.perf_counter() - t)
        for name, rec in recorders.items():
            t = time.perf_counter()
            rec.record_suite(s)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens": n_tokens, "sites": len(next(iter(recorders.values())).targets),
            "seconds": med, "ratio": {k: med[k] / med["plain forward"] for k in recorders}}


def _child(args: list[str], env: dict | None = None) -> dict:
    """Run one measurement in a fresh interpreter; it prints its result (or its UserError) as the last JSON line."""
    out = subprocess.run([sys.executable, "-m", "sparsescope.bench", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise UserError(result["error"])
    return result


MEMORY_METRICS = "zero_frac,near_zero_frac,hoyer,delta_frac"  # all sites + neurons; sort buffers are per batch anyway


def memory(model: str = "smollm2-135m", suite: str = "prose", factor: int = 10) -> dict:
    """Peak RSS of recording 10 prompts vs ``factor`` × as many tokens (all sites, neurons), fresh processes."""
    check_whole(factor, "factor", 2)
    small = _child(["_memory", model, suite, "1"])
    large = _child(["_memory", model, suite, str(factor)])
    return {"1x": small, f"{factor}x": large, "ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
            "growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"]}


def _memory_child(model: str, suite: str, repeat: int) -> dict:
    lm = load_model(model)
    s = load_suites([suite], tokenizer=lm.tokenizer)[0]
    s.prompts = s.prompts[:10] * repeat
    run = Recorder(lm, RecordConfig(metrics=MEMORY_METRICS)).record_suite(s)
    return {"tokens": int(run.prompts[run.prompts.metric == "nll"].n_tokens.sum() + len(s.prompts)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def load_time(model: str = "smollm2-135m") -> dict:
    """First load (in an empty cache) vs later loads, fresh processes. For an embedded model the first load is
    the GGUF dequantisation + cache write; any other model has no cache to build (``first`` says which)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"SPARSESCOPE_CACHE": cache}
        first = _child(["_load", model], env)
        cached = [_child(["_load", model], env)["seconds"] for _ in range(3)]
    return {"first_s": first["seconds"], "cached_s": statistics.median(cached),
            "ratio": first["seconds"] / statistics.median(cached),
            "first": "GGUF dequantisation + cache write" if model in EMBEDDED else "cold load, no cache to build"}


def _load_child(model: str) -> dict:
    import transformers  # noqa: F401 — import cost is not load cost

    t = time.perf_counter()
    load_model(model)
    return {"seconds": time.perf_counter() - t}


if __name__ == "__main__":  # child-process entry points
    cmd, *rest = sys.argv[1:]
    try:
        result = _memory_child(rest[0], rest[1], int(rest[2])) if cmd == "_memory" else _load_child(rest[0])
    except UserError as e:
        result = {"error": str(e)}
    print(json.dumps(result))

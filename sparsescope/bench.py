"""Side-by-side benchmarks that print ratios (never timed assertions): recording overhead, memory, load time.

Each comparison runs both sides in one process run, interleaved over repeats, and reports medians, so a noisy
shared machine affects both sides alike. Memory and load time are measured in fresh child processes, because a
process's peak RSS and import caches only go up.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import torch

from sparsescope.models import load_model
from sparsescope.probes import load_suites
from sparsescope.kernels.stats import kernel as stats_kernel
from sparsescope.record import RecordConfig, Recorder


SORT_FREE = "zero_frac,near_zero_frac,hoyer,delta_frac"  # every default metric but the energy ones (mass, teal)


def record_overhead(model: str = "smollm2-135m", suite: str = "prose", repeats: int = 3, n_prompts: int | None = None,
                    torch_path: bool = False) -> dict:
    """Median time of recording vs a plain forward over the same batches, interleaved in one process.

    Sides: the plain forward, recording all default metrics (every site, neurons, logits, tables included), the
    sort-free subset (no mass_density / teal_sparsity), and with ``torch_path`` all metrics through the pure-torch
    twin of the kernel. ``load`` is the 1-minute load average before and after: ratios are only comparable on
    an idle machine, but both sides of a ratio share whatever load there was.
    """
    lm = load_model(model)
    s = load_suites([suite], tokenizer=lm.tokenizer)[0]
    if n_prompts:
        s.prompts = s.prompts[:n_prompts]
    sides = {"all metrics": RecordConfig(), "sort-free": RecordConfig(metrics=SORT_FREE)}
    if torch_path:
        sides["all metrics, torch path"] = RecordConfig(kernels=False)
    recorders = {name: Recorder(lm, cfg) for name, cfg in sides.items()}
    first = next(iter(recorders.values()))
    batches = [(x, m.long()) for _, x, m in first.batches(first.tokenize(s.texts))]
    n_tokens = sum(int(m.sum()) for _, m in batches)
    times: dict[str, list[float]] = {"plain forward": [], **{k: [] for k in recorders}}
    load = [os.getloadavg()[0]]
    lm.forward(*batches[0])  # warm-up, and the kernel is built or loaded before any timing
    for rec in recorders.values():
        rec.record_suite(type(s)(s.name, s.split, s.prompts[:1], s.source, s.license))
    for _ in range(repeats):
        t = time.perf_counter()
        for x, m in batches:
            lm.forward(x, m)
        times["plain forward"].append(time.perf_counter() - t)
        for name, rec in recorders.items():
            t = time.perf_counter()
            rec.record_suite(s)
            times[name].append(time.perf_counter() - t)
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens": n_tokens, "sites": len(first.targets), "seconds": med, "load": load,
            "ratio": {k: med[k] / med["plain forward"] for k in recorders}, "kernel": stats_kernel() is not None}


def _child(args: list[str], env: dict | None = None) -> dict:
    """Run one measurement in a fresh interpreter; it prints its result as the last JSON line."""
    out = subprocess.run([sys.executable, "-m", "sparsescope.bench", *args], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(model: str = "smollm2-135m", suite: str = "prose", factor: int = 10) -> dict:
    """The recorder's own memory for 10 prompts vs the same 10 prompts each ``factor`` × as long (all default
    metrics, every site, neurons), each in a fresh process: its streaming state, the Python allocations
    (tracemalloc peak) and the RSS growth over the run after a warm-up forward (not the process's peak)."""
    small = _child(["_memory", model, suite, "1"])
    large = _child(["_memory", model, suite, str(factor)])
    return {"1x": small, f"{factor}x": large, "factor": factor,
            "ratio": {k: large[k] / small[k] if small[k] else math.nan for k in small}}


def _rss_mb() -> float:
    """Resident set size now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_child(model: str, suite: str, repeat: int) -> dict:
    lm = load_model(model)
    s = load_suites([suite], tokenizer=lm.tokenizer)[0]
    s.prompts = [dataclasses.replace(p, text=" ".join([p.text] * repeat)) for p in s.prompts[:10]]
    rec = Recorder(lm, RecordConfig(max_tokens=4096, batch_size=10))
    warm = rec.record_suite(type(s)(s.name, s.split, s.prompts[:1], s.source, s.license))  # kernel, allocator pools
    del warm
    gc.collect()
    rss0 = _rss_mb()
    tracemalloc.start()
    run = rec.record_suite(s)
    py_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"tokens": int(run.prompts[run.prompts.metric == "nll"].n_tokens.sum() + len(s.prompts)),
            "state_mb": rec.state_bytes / 2**20, "python_peak_mb": py_peak, "rss_growth_mb": _rss_mb() - rss0}


def load_time(model: str = "smollm2-135m") -> dict:
    """First load (GGUF dequantisation + cache write, in an empty cache) vs cached load, fresh processes."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"SPARSESCOPE_CACHE": cache}
        first = _child(["_load", model], env)
        cached = [_child(["_load", model], env)["seconds"] for _ in range(3)]
    return {"first_s": first["seconds"], "cached_s": statistics.median(cached),
            "ratio": first["seconds"] / statistics.median(cached)}


def _load_child(model: str) -> dict:
    import transformers  # noqa: F401 — import cost is not load cost

    t = time.perf_counter()
    load_model(model)
    return {"seconds": time.perf_counter() - t}


if __name__ == "__main__":  # child-process entry points
    cmd, *rest = sys.argv[1:]
    result = _memory_child(rest[0], rest[1], int(rest[2])) if cmd == "_memory" else _load_child(rest[0])
    print(json.dumps(result))

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
from collections.abc import Sequence
from pathlib import Path

import torch

from sparsescope.errors import UserError, check_whole
from sparsescope.models import load_model
from sparsescope.models.loading import EMBEDDED
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
    check_whole(repeats, "repeats", 1, "medians need at least one repeat; pass e.g. --repeats 3")
    lm = load_model(model)
    s = load_suites([suite], tokenizer=lm.tokenizer)[0]
    if n_prompts:
        s.prompts = s.prompts[:n_prompts]
    sides = {"all metrics": RecordConfig(window=0), "sort-free": RecordConfig(metrics=SORT_FREE, window=0)}
    if torch_path:
        sides["all metrics, torch path"] = RecordConfig(kernels=False, window=0)
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


def memory(model: str = "smollm2-135m", suite: str = "prose", factor: int = 10) -> dict:
    """The recorder's own memory for 10 prompts vs the same 10 prompts each ``factor`` × as long (all default
    metrics, every site, neurons), each in a fresh process: its streaming state, the Python allocations
    (tracemalloc peak) and the RSS growth over the run after a warm-up forward (not the process's peak)."""
    check_whole(factor, "factor", 2)
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
    rec = Recorder(lm, RecordConfig(max_tokens=4096, batch_size=10, window=0))
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


# ---- harvest benchmarks: sparse kernels and decode (side by side, interleaved, medians) ----

KERNEL_SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576), (4096, 11008))  # (in, out): SmolLM2 + Llama-7B
KERNEL_SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def kernels(shapes=KERNEL_SHAPES, sparsities=KERNEL_SPARSITIES, repeats: int = 7, progress=None,
            cpu_time: bool = False):
    """Kernel table per (in, out) shape: torch dense, our dense, our sparse at each s, fp32 and int8 weights.

    Timed side by side by ``kernels.timing.time_cases`` (interleaved repeats, medians, rotating masks); with
    ``cpu_time`` by the process's CPU time (meaningful with one thread on a loaded machine).
    ``speedup_vs_best_dense``: against the faster of torch dense (``F.linear``) and our dense fp32.
    ``frac_of_ideal``: the speed-up over the dense path of the same weight format (best fp32 dense; our int8
    dense for int8) divided by the ideal 1/(1−s).
    """
    import pandas as pd

    from sparsescope.kernels.timing import TORCH_DENSE, time_cases

    cases = [TORCH_DENSE, ("ours", "fp32", 0.0), ("ours", "int8", 0.0)]
    cases += [("ours", fmt, s) for s in sparsities for fmt in ("fp32", "int8")]
    rows = []
    for n_in, n_out in shapes:
        clock = time.process_time if cpu_time else time.perf_counter
        med = time_cases(n_in, n_out, cases, repeats=repeats, clock=clock)
        best = min(med[TORCH_DENSE], med[("ours", "fp32", 0.0)])
        same = {"fp32": best, "int8": med[("ours", "int8", 0.0)]}
        for (backend, fmt, s), sec in med.items():
            kernel = "torch dense" if backend == "torch" else f"ours {'' if fmt == 'fp32' else 'int8 '}" \
                f"{'dense' if s == 0 else 'sparse'}"
            rows.append({"shape": f"{n_in}x{n_out}", "in_features": n_in, "out_features": n_out, "sparsity": s,
                         "kernel": kernel, "seconds": sec, "speedup_vs_best_dense": best / sec,
                         "frac_of_ideal": same[fmt] / sec * (1 - s),
                         "gb_per_s": round((1 - s) * n_in) * n_out * (1 if fmt == "int8" else 4) / sec / 1e9,
                         "repeats": repeats, "clock": "cpu" if cpu_time else "wall"})
        if progress:
            progress(f"{n_in}x{n_out}")
    return pd.DataFrame(rows)


def amdahl(lm, sparsity: float) -> dict:
    """Bytes-bound ceilings of batch-1 decode: the LM head (not input-sparse) caps what activation sparsity gives.

    ``head_fraction``: the LM head's share of the linear weight bytes read per token (fp32). With the block
    linears sparse at s and everything else unchanged, time ∝ bytes gives 1/(f + (1−f)(1−s)), at most 1/f.
    """
    from sparsescope.harvest.compare import linear_shapes

    block = sum(i * o for i, o in linear_shapes(lm).values())
    head = lm.model.get_output_embeddings().weight.numel()
    f = head / (head + block)
    return {"head_fraction": f, "head_params": head, "block_params": block,
            "bound_at_s": 1 / (f + (1 - f) * (1 - sparsity)), "bound_any_s": 1 / f, "sparsity": sparsity}


def decode(model: str = "smollm2-135m", plans: list[str] | None = None, sparsity: float = 0.5, n_new: int = 32,
           repeats: int = 3, eval_tokens: int = 1024, calib_tokens: int = 1024, progress=None,
           cpu_time: bool = False, threads: Sequence[int] = ()):
    """Decode tokens/s in the lean loop, dense vs sparse/int8/planned, with each configuration's Δppl.

    Dense twice (torch ``F.linear`` modules, and our dense GEMV on every linear and the head): the faster one is
    the baseline of ``speedup``. Then TEAL at ``sparsity`` on every block linear (our kernel), int8 weights
    (with an int8 head), int8 + TEAL, and each plan file in ``plans``, all in the fused loop; HF ``generate`` for
    reference. ``threads``: thread counts timed in turn (default: the current one). ``cpu_time``: time by the
    process's CPU time (one thread). Returns (table, Amdahl bounds, the fused loop's profile of dense and int8:
    ms per token per component, at the current thread count).
    """
    from sparsescope.eval import Evaluator
    from sparsescope.harvest.decode import DecodeConfig, dense_configs, measure, profile
    from sparsescope.harvest.planner import HarvestPlan
    from sparsescope.intervene import Plan, Rule
    from sparsescope.probes import load_text
    from sparsescope.record.calibration import calibrate

    lm = load_model(model)
    configs = dense_configs() | {
               f"TEAL {sparsity:.0%}": DecodeConfig(Plan([Rule("sparse", {"sparsity": sparsity})]), "fp32"),
               "int8": DecodeConfig(Plan([Rule("sparse", {"sparsity": 0.0, "weights": "int8"})]), "int8"),
               f"int8 + TEAL {sparsity:.0%}": DecodeConfig(Plan([Rule("sparse", {"sparsity": sparsity,
                                                                                 "weights": "int8"})]), "int8")}
    for path in plans or []:
        hp = HarvestPlan.from_yaml(path)
        hp.check(lm)
        configs[f"planned {Path(path).name} ({hp.plan.name})"] = DecodeConfig(hp.plan, hp.lm_head)
    heldout = load_text("heldout")
    evaluator = Evaluator(lm, heldout, max_tokens=eval_tokens)
    evaluator.reference()
    calibration = calibrate(lm, load_text("calibration"), max_tokens=calib_tokens)
    prompt = lm.tokenizer(heldout)["input_ids"][:16]
    table = measure(lm, configs, prompt, n_new, repeats, evaluator, calibration, progress=progress,
                    clock=time.process_time if cpu_time else time.perf_counter, threads=threads)
    parts = profile(lm, {k: v for k, v in configs.items() if k in ("dense ours", "int8")}, prompt,
                    calibration=calibration, clock="cpu" if cpu_time else "wall")
    return table, amdahl(lm, sparsity), parts


def check_threads(threads: Sequence[int], cpu_time: bool) -> None:
    """Refuse thread counts below 1, and CPU-time clocks with more than one thread (they add up every thread)."""
    if any(not isinstance(t, int) or t < 1 for t in threads):
        raise UserError(f"--threads {list(threads)}: thread counts must be whole numbers ≥ 1, e.g. 2,1")
    if cpu_time and max(threads or [torch.get_num_threads()]) > 1:
        raise UserError("--cpu-time adds up the CPU time of every thread; run it with OMP_NUM_THREADS=1 "
                        "(or --threads 1)")


def _bench_run(store, table_name: str, table, config: dict, load_before: tuple, extra: dict | None = None,
               more: dict | None = None):
    """Store one benchmark table (and ``more`` tables) as a ``bench`` run, with the load average before and
    after in the manifest."""
    from sparsescope import __version__

    run = store.create({"kind": "bench", "model": config.get("model", "kernels"), "config": config,
                        "package_version": __version__, "loadavg_before": list(load_before),
                        "loadavg_after": list(os.getloadavg())} | (extra or {}))
    run.finalize({name: t.assign(run_id=run.run_id) for name, t in {table_name: table, **(more or {})}.items()})
    return run


def kernels_run(store, repeats: int = 7, progress=None, cpu_time: bool = False):
    """``bench kernels`` as a stored ``bench`` run (table ``kernels``); returns (run, table)."""
    store.check_writable()
    if cpu_time and torch.get_num_threads() > 1:
        raise UserError("--cpu-time adds up the CPU time of every thread; run it with OMP_NUM_THREADS=1")
    before = os.getloadavg()
    table = kernels(repeats=repeats, progress=progress, cpu_time=cpu_time)
    config = {"repeats": repeats, "threads": torch.get_num_threads(), "clock": "cpu" if cpu_time else "wall"}
    return _bench_run(store, "kernels", table, config, before), table


def decode_run(store, model: str = "smollm2-135m", plans: list[str] | None = None, sparsity: float = 0.5,
               n_new: int = 32, repeats: int = 3, progress=None, cpu_time: bool = False,
               threads: Sequence[int] = ()):
    """``bench decode`` as a stored ``bench`` run (table ``decode``, Amdahl bound in the manifest).

    Returns (run, table, bound)."""
    store.check_writable()
    check_threads(threads, cpu_time)
    before = os.getloadavg()
    table, bound, parts = decode(model, plans, sparsity, n_new, repeats, progress=progress, cpu_time=cpu_time,
                                 threads=threads)
    config = {"model": model, "plans": plans, "sparsity": sparsity, "tokens": n_new, "repeats": repeats,
              "threads": list(threads) or [torch.get_num_threads()], "clock": "cpu" if cpu_time else "wall"}
    run = _bench_run(store, "decode", table, config, before, {"amdahl": bound},
                     {"decode_profile": parts.assign(threads=torch.get_num_threads())})
    return run, table, bound, parts

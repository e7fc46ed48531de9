"""Side-by-side timing of the GEMV kernels on one weight shape: interleaved repeats, medians, rotating masks.

Shared by ``sparsescope bench kernels`` (the table) and the harvest planner (the time each choice saves).
Inputs rotate through several random masks with exactly ``round(s·in)`` zeros, so the rows a sparse call needs
do not stay in cache from one call to the next (a fixed mask at s = 0.9 would inflate the speed-up). With
``cold_bytes`` the calls also rotate through enough copies of the weight to exceed the last-level cache, as in
decode, where a model's weights stream from DRAM: a small weight timed alone sits in cache, where reading fewer
bytes (sparse, int8) saves little and the fixed per-call cost dominates.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from sparsescope.kernels import sparse as sp

TORCH_DENSE = ("torch", "fp32", 0.0)  # a case: (backend, weight format, input sparsity)
MAX_COPIES = 1024  # tiny weights (tests) stay cheap to copy; SmolLM2's smallest (576x192) needs 455


def _seconds(fn, inputs: list, calls: int, clock=time.perf_counter) -> float:
    t = clock()
    for i in range(calls):
        fn(inputs[i % len(inputs)])
    return (clock() - t) / calls


def time_cases(n_in: int, n_out: int, cases: list[tuple[str, str, float]], repeats: int = 7, masks: int = 8,
               target_s: float = 0.01, seed: int = 0, stat=statistics.median, clock=time.perf_counter,
               cold_bytes: int = 0) -> dict[tuple[str, str, float], float]:
    """Seconds per call of y = W x for W [n_out, n_in] (``stat`` over repeats, the median by default), per case
    ``(backend, fmt, sparsity)``. ``clock=time.process_time`` counts only the CPU time this process got (for
    single-threaded runs on a shared machine: time spent descheduled is left out; memory contention is not).

    backend ``torch``: ``F.linear`` on the ordinary [out, in] fp32 weight (dense only); ``ours``: our GEMV on the
    packed weight, dense when sparsity is 0, else sparse over the exact zeros of x. Every case runs once per
    repeat in turn (interleaved, so a busy machine slows all alike), ``target_s`` of calls per timing.
    """
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n_out, n_in, generator=gen) / n_in ** 0.5
    copies = min(MAX_COPIES, max(1, math.ceil(cold_bytes / (n_in * n_out))))  # in int8 bytes: all formats exceed
    Ws = [W] + [W.clone() for _ in range(copies - 1)]
    packed = {fmt: [sp.pack(w, fmt=fmt) for w in Ws] for fmt in {c[1] for c in cases if c[0] == "ours"}}
    base = [torch.randn(1, n_in, generator=gen) for _ in range(masks)]
    inputs = {}
    for s in {c[2] for c in cases}:
        xs = [x.clone() for x in base]
        for x in xs:
            x[0, torch.randperm(n_in, generator=gen)[: round(s * n_in)]] = 0.0
        inputs[s] = xs

    def fn(case):
        backend, fmt, s = case
        turn = iter(range(1 << 62))
        if backend == "torch":
            return lambda x: F.linear(x, Ws[next(turn) % copies])
        threshold = None if s == 0 else 0.0
        return lambda x: sp.linear(packed[fmt][next(turn) % copies], x, threshold)

    fns = {c: fn(c) for c in cases}
    calls = {}
    for c in cases:  # warm up, then size each loop to ~target_s
        fns[c](inputs[c[2]][0])
        calls[c] = max(3, int(target_s / max(_seconds(fns[c], inputs[c[2]], 3, clock), 1e-7)))
    times: dict = {c: [] for c in cases}
    for _ in range(repeats):
        for c in cases:
            times[c].append(_seconds(fns[c], inputs[c[2]], calls[c], clock))
    return {c: stat(v) for c, v in times.items()}

"""Cost of one edge-patched forward on the embedded SmolLM2 (70,651 edges, IOI prompts), by circuit size: each reader
group's patch summed over the smaller side (``edges.edge_sum``: writers with a removed edge, or Σδ minus writers with
a kept edge) against the dense ``cᵀ @ δ`` over every writer, and against the plain unpatched forward. One process,
the two variants interleaved, median of repeats; a circuit of size k keeps the top k edges of the EAP ranking (as a
faithfulness curve does) or k random edges (the worst case: they touch every reader group).

Run: PYTHONPATH=. python benchmarks/edge_forward.py [--n 16] [--repeats 3]   (about 3 min on an idle machine)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsescope.circuits import attribution, edges
from sparsescope.circuits.tasks import make_task
from sparsescope.models import load_model

SIZES_PCT = (0.1, 1, 10, 50, 100)


def dense(c: torch.Tensor, d: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    return c.t() @ d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="IOI prompt pairs")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load before: {open('/proc/loadavg').read().split()[0]}")
    lm = load_model("smollm2-135m")
    p = edges.EdgePatcher(lm)
    prepared = p.prepare(make_task("ioi", lm.tokenizer, args.n, "train", 0))
    smaller = edges.edge_sum
    times: dict[tuple[str, float], list[float]] = {}

    def timed(key, fn):
        start = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - start)

    rankings = {"eap top-k": attribution.attribute(p, prepared, 1).abs(),
                "random": torch.rand(p.n_nodes, generator=torch.Generator().manual_seed(0))}
    for _ in range(args.repeats):
        timed(("plain forward", "", 0), lambda: p.metric(prepared))
        for which, score in rankings.items():
            for pct in SIZES_PCT:
                keep = torch.zeros(p.n_nodes)
                keep[torch.argsort(score, descending=True)[: max(1, round(pct / 100 * p.n_nodes))]] = 1
                for name, fn in (("smaller side", smaller), ("dense", dense)):
                    edges.edge_sum = fn
                    timed((name, which, pct), lambda: p.metric(prepared, keep))
    edges.edge_sum = smaller
    plain = statistics.median(times[("plain forward", "", 0)])
    print(f"{p.n_nodes} edges, {args.n} prompts; plain forward {plain:.2f} s")
    print(f"{'circuit':>10s} {'size':>6s} {'dense s':>8s} {'smaller s':>9s} {'speedup':>8s} {'dense/plain':>11s} "
          f"{'smaller/plain':>13s}")
    for which in rankings:
        for pct in SIZES_PCT:
            d, s = (statistics.median(times[(name, which, pct)]) for name in ("dense", "smaller side"))
            print(f"{which:>10s} {pct:5g}% {d:8.2f} {s:9.2f} {d / s:8.2f} {d / plain:11.2f} {s / plain:13.2f}")
    print(f"load after: {open('/proc/loadavg').read().split()[0]}")


if __name__ == "__main__":
    main()

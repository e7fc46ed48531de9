"""MIB circuit-localisation scores: faithfulness curves, CPR, CMD, necessity, sufficiency, random baseline.

A circuit C of size k is the top-k nodes of a ranking; everything outside it is patched to its reference.
Faithfulness ``f(C) = (m(C) − m(∅)) / (m(N) − m(∅))`` with m the mean task metric, N the full model (keep = 1
everywhere) and ∅ the empty circuit (keep = 0 everywhere); all three go through the same patched forward, so f is
exactly 1 for the full model and 0 for the empty circuit. The curve is taken at MIB's sizes (percent of nodes,
at least one node); CPR is the area under f and CMD the area under |1 − f|, by the trapezoid rule over the size
fraction in [0, 1] (the x-axis is the fraction, so large circuits weigh most, as in MIB).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sparsescope.circuits.patch import Patcher

SIZES_PCT = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # MIB's circuit sizes, percent of components
TARGET = 0.8  # the chosen circuit is the smallest one whose faithfulness on the discovery split reaches this


def n_components(pct: float, n: int) -> int:
    """Nodes in a circuit of ``pct`` percent of ``n`` (rounded up, at least one)."""
    return max(1, min(n, math.ceil(pct / 100 * n - 1e-9)))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-vector of the k nodes with the largest |score| (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-abs(float(scores[i])), i))
    keep = torch.zeros(len(scores))
    keep[order[:k]] = 1.0
    return keep


@dataclass
class Ends:
    """m(N) and m(∅) of one prompt set: the two ends every faithfulness is normalised by."""

    full: float
    empty: float

    def f(self, m: float) -> float:
        return (m - self.empty) / (self.full - self.empty)


def ends(patcher: Patcher, prepared) -> Ends:
    return Ends(patcher.metric(prepared, torch.ones(patcher.n_nodes)), patcher.metric(prepared,
                                                                                       torch.zeros(patcher.n_nodes)))


def area(x: list[float], y: list[float]) -> float:
    return float(np.trapezoid(y, x)) if hasattr(np, "trapezoid") else float(np.trapz(y, x))


class Curve:
    """Faithfulness of the top-k circuits of one ranking, each k measured once (MIB's small sizes often round to the
    same k; k = all nodes is m(N) itself)."""

    def __init__(self, patcher: Patcher, prepared, scores: torch.Tensor, e: Ends,
                 progress: Callable[[int], None] | None = None):
        self.patcher, self.prepared, self.scores, self.e, self.progress = patcher, prepared, scores, e, progress
        self.metric: dict[int, float] = {patcher.n_nodes: e.full}

    def f(self, k: int) -> float:
        if k not in self.metric:
            self.metric[k] = self.patcher.metric(self.prepared, top_k(self.scores, k))
            if self.progress:
                self.progress(1)
        return self.e.f(self.metric[k])

    def table(self, sizes: tuple[float, ...] = SIZES_PCT) -> pd.DataFrame:
        """``size_pct, size_frac, n_components, faithfulness`` at every size."""
        n = self.patcher.n_nodes
        return pd.DataFrame([dict(size_pct=pct, size_frac=pct / 100, n_components=n_components(pct, n),
                                  faithfulness=self.f(n_components(pct, n))) for pct in sizes])

    def smallest(self, sizes: tuple[float, ...] = SIZES_PCT, target: float = TARGET) -> int:
        """Nodes in the smallest circuit of ``sizes`` reaching ``target``, by bisection (f is taken as increasing
        with size; ~log2(sizes) evaluations instead of all). All nodes (f = 1) always qualifies."""
        ks = sorted({n_components(pct, self.patcher.n_nodes) for pct in sizes} | {self.patcher.n_nodes})
        lo, hi = 0, len(ks) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.f(ks[mid]) >= target:
                hi = mid
            else:
                lo = mid + 1
        return ks[lo]


    def smallest_k(self, sizes: tuple[float, ...] = SIZES_PCT, target: float = TARGET) -> int:
        """Fewest nodes (any count, not only MIB's sizes) whose top-k circuit reaches ``target``: the smallest MIB
        size first, then bisection between it and the MIB size below it (which fails)."""
        hi = self.smallest(sizes, target)
        lo = max([n_components(pct, self.patcher.n_nodes) for pct in sizes
                  if n_components(pct, self.patcher.n_nodes) < hi], default=0)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.f(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi


def faithfulness_curve(patcher: Patcher, prepared, scores: torch.Tensor, e: Ends,
                       sizes: tuple[float, ...] = SIZES_PCT, progress: Callable[[int], None] | None = None
                       ) -> pd.DataFrame:
    """``size_pct, size_frac, n_components, faithfulness`` of the top-k circuits of ``scores``."""
    return Curve(patcher, prepared, scores, e, progress).table(sizes)


def cpr_cmd(table: pd.DataFrame) -> tuple[float, float]:
    """Area under f and under |1 − f| over the size fraction."""
    x, f = table["size_frac"].tolist(), table["faithfulness"].tolist()
    return area(x, f), area(x, [abs(1 - v) for v in f])


def random_curves(patcher: Patcher, prepared, e: Ends, seeds: int = 5, sizes: tuple[float, ...] = SIZES_PCT,
                  progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Faithfulness of uniformly random circuits at every size, ``seeds`` draws (column ``seed``)."""
    frames = []
    for seed in range(seeds):
        scores = torch.rand(patcher.n_nodes, generator=torch.Generator().manual_seed(seed))
        frames.append(faithfulness_curve(patcher, prepared, scores, e, sizes, progress).assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def necessity(patcher: Patcher, prepared, keep: torch.Tensor, e: Ends) -> float:
    """Share of the full model's metric (above ∅) lost when only the circuit is patched: 1 − f(N ∖ C)."""
    return 1.0 - e.f(patcher.metric(prepared, 1 - keep))

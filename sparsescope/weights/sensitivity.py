"""Pruning sensitivity: Δppl against sparsity, whole-model and one layer at a time, and the essential-sparsity knee.

Essential sparsity (the knee) is defined here as the largest sparsity reached, walking up the measured curve from
(0, 0) with straight lines between measured points, before Δppl / dense ppl first exceeds a tolerance (1 % by
default). A curve that never exceeds it gives its largest measured sparsity, flagged ``reached = False``
(a lower bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sparsescope.errors import UserError
from sparsescope.eval import Evaluator
from sparsescope.intervene import Plan, Rule, apply
from sparsescope.models.loading import LoadedModel
from sparsescope.levers.prune import PRUNE_METHODS, global_magnitude_plan, parse_nm

ALL_LAYERS = -1  # `layer` value of whole-model rows
CURVE_METHODS = (*PRUNE_METHODS, "global")  # "global": one magnitude threshold over all linears (whole model only)


@dataclass
class SensitivityConfig:
    """Which pruning curves to measure. ``per_layer`` prunes one layer at a time (``layers`` of them): costly."""

    methods: tuple[str, ...] = PRUNE_METHODS  # magnitude, wanda, random and/or global (one |W| threshold, whole model)
    sparsities: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # points of each curve, in (0, 1)
    nm: str | None = "2:4"  # N:M pattern evaluated once per method; None skips it
    per_layer: bool = False  # also prune one layer at a time (layers × methods × sparsities evaluations)
    layers: Sequence[int] | None = None  # layers for per_layer; None = every layer
    tolerance: float = 0.01  # essential sparsity: the largest sparsity with Δppl / dense ppl ≤ this
    seed: int = 0  # seed of the random-pruning masks

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(CURVE_METHODS)
        if unknown or not self.methods:
            raise UserError(f"unknown pruning method(s) {sorted(unknown)}; use some of {', '.join(CURVE_METHODS)}")
        if not self.sparsities or not all(0 < s < 1 for s in self.sparsities):
            raise UserError(f"sparsities must lie in (0, 1), got {list(self.sparsities)}; pass e.g. 0.1,0.3,0.5")
        if self.nm is not None:
            parse_nm(self.nm)
        if not 0 < self.tolerance < 1:
            raise UserError(f"tolerance {self.tolerance} must lie in (0, 1); pass e.g. 0.01 for 1 %")


def essential_sparsity(sparsity: Sequence[float], rel_delta: Sequence[float], tolerance: float = 0.01
                       ) -> tuple[float, bool]:
    """(knee, reached): where the curve through (0, 0) and the points first exceeds ``tolerance`` (see module doc)."""
    s = np.concatenate([[0.0], np.asarray(sparsity, float)])
    r = np.concatenate([[0.0], np.asarray(rel_delta, float)])
    order = np.argsort(s, kind="stable")
    s, r = s[order], r[order]
    over = np.flatnonzero(r > tolerance)
    if not len(over):
        return float(s[-1]), False
    i = over[0]
    if i == 0:
        return 0.0, True
    return float(s[i - 1] + (tolerance - r[i - 1]) / (r[i] - r[i - 1]) * (s[i] - s[i - 1])), True


def plans(lm: LoadedModel, cfg: SensitivityConfig) -> list[tuple[dict, Plan | Callable[[], Plan]]]:
    """(labels, plan) per measurement; global-magnitude plans are built lazily (they read every weight)."""
    out: list[tuple[dict, Plan | Callable[[], Plan]]] = []
    layer_sets = [(ALL_LAYERS, None)]
    if cfg.per_layer:
        layers = range(lm.n_layers) if cfg.layers is None else cfg.layers
        for layer in layers:
            lm.sites.check_layer(layer)
        layer_sets += [(layer, [layer]) for layer in layers]
    for layer, layers in layer_sets:
        for method in cfg.methods:
            if method == "global":
                if layer == ALL_LAYERS:
                    out += [({"method": method, "config": f"{s:g}", "layer": layer, "sparsity": s},
                             lambda s=s: global_magnitude_plan(lm, s)) for s in cfg.sparsities]
                continue
            params = {"method": method, "seed": cfg.seed}
            out += [({"method": method, "config": f"{s:g}", "layer": layer, "sparsity": s},
                     Plan([Rule("prune", params | {"sparsity": s}, layers=layers)])) for s in cfg.sparsities]
            if cfg.nm is not None:
                n, m = parse_nm(cfg.nm)
                out.append(({"method": method, "config": cfg.nm, "layer": layer, "sparsity": 1 - n / m},
                            Plan([Rule("prune", params | {"nm": cfg.nm}, layers=layers)])))
    return out


def sensitivity(lm: LoadedModel, evaluator: Evaluator, cfg: SensitivityConfig,
                calibration: dict[str, dict[str, torch.Tensor]] | None = None,
                progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Tidy table ``method, config, layer, sparsity, ppl, delta_ppl, rel_delta_ppl, kl, n_tokens`` (layer −1 = all).

    ``config`` is the sparsity, or the N:M pattern. Wanda needs ``calibration`` (from ``calibrate``).
    """
    evaluator.reference()
    rows = []
    for labels, plan in plans(lm, cfg):
        with apply(lm, plan if isinstance(plan, Plan) else plan(), calibration):
            result = evaluator.evaluate()
        rows.append(labels | result | {"rel_delta_ppl": result["delta_ppl"] / evaluator.dense_ppl})
        if progress:
            progress(f"{labels['method']} {labels['config']}")
    cols = ["method", "config", "layer", "sparsity", "ppl", "delta_ppl", "rel_delta_ppl", "kl", "n_tokens"]
    return pd.DataFrame(rows)[cols]


def knees(table: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Essential sparsity per method and layer from the unstructured rows of a sensitivity table."""
    rows = []
    unstructured = table[~table["config"].str.contains(":")]
    for (method, layer), g in unstructured.groupby(["method", "layer"], sort=False):
        knee, reached = essential_sparsity(g["sparsity"], g["rel_delta_ppl"], tolerance)
        rows.append({"method": method, "layer": layer, "tolerance": tolerance, "essential_sparsity": knee,
                     "reached": reached})
    return pd.DataFrame(rows, columns=["method", "layer", "tolerance", "essential_sparsity", "reached"])



"""The ``weights`` experiment's tables and page: statistics of every layer × weight site, plus pruning sensitivity.

The CLI loads, evaluates and stores; this module only shapes tables and the HTML page.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.record.metrics import Metric
from sparsescope.weights.stats import weight_stats, weight_table

WEIGHT_METRICS = tuple(weight_stats(torch.eye(4, 8)).keys())  # e.g. zero_frac, near_zero_frac@0.1, nm24_kept_l2


def check_metric(metric: str) -> None:
    if metric not in WEIGHT_METRICS:
        raise UserError(f"unknown weight metric {metric!r}; use one of {', '.join(WEIGHT_METRICS)}")


def stats_table(lm: LoadedModel) -> pd.DataFrame:
    """Tidy ``model, layer, site, metric, threshold, value, n_params`` over every layer × weight site.

    Fused q/k/v matrices are sliced, so each weight site has its own rows; ``attrs["note"]`` is ``lm.weights_note``.
    """
    triples = ((layer, ws, lm.sites.weight(layer, ws)) for layer in range(lm.n_layers) for ws in lm.sites.weight_sites)
    table = weight_table(triples, note=lm.weights_note)
    table.insert(0, "model", lm.name)
    return table


def grid(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a layers × weight sites frame (sites in the model's order)."""
    check_metric(metric)
    m = Metric.parse(metric)
    same = table["threshold"].isna() if math.isnan(m.threshold) else table["threshold"] == m.threshold
    rows = table[(table["metric"] == m.name) & same]
    return rows.pivot(index="layer", columns="site", values="value")[list(dict.fromkeys(rows["site"]))]



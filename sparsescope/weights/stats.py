"""Weight statistics per linear layer: how much of W is (near) zero, how uneven it is, how 2:4-ready it is.

All statistics are computed in float64 on W shaped [out_features, in_features] (nn.Linear.weight).
"""

from collections.abc import Iterable

import pandas as pd
import torch

from sparsescope.record.metrics import Metric

NEAR_ZERO_THRESHOLDS = (0.01, 0.05, 0.1, 0.25)
OUTLIER_RATIO = 6.0  # an input column is an outlier when its L2 norm exceeds this multiple of the median column norm


def _spread(norms: torch.Tensor, prefix: str) -> dict[str, float]:
    """Coefficient of variation (population std / mean) and max / median of a vector of norms."""
    median = torch.quantile(norms, 0.5)  # interpolated median, as numpy.median
    return {
        f"{prefix}_cv": (norms.std(correction=0) / norms.mean()).item(),
        f"{prefix}_max_median": (norms.max() / median).item(),
    }


def nm_readiness(W: torch.Tensor, n: int = 2, m: int = 4) -> tuple[float, float]:
    """Shares of sum |W| and of sum W^2 kept by the best n-of-m pattern in each group of m consecutive inputs.

    The best pattern keeps the n largest |W| of each group, for both masses. NaN if in_features is not
    a multiple of m (no such pattern exists) or W is all zero.
    """
    out_features, in_features = W.shape
    if in_features % m:
        return float("nan"), float("nan")
    A = W.detach().to(torch.float64).abs()
    kept = A.reshape(-1, m).sort(dim=-1).values[:, m - n :]
    return (kept.sum() / A.sum()).item(), (kept.pow(2).sum() / A.pow(2).sum()).item()


def weight_stats(W: torch.Tensor) -> dict[str, float]:
    """Statistics of one weight matrix; keys are `metric` or `metric@threshold` (see `weight_table`).

    - zero_frac: share of exact zeros.
    - near_zero_frac@t: share with |W_ij| <= t * RMS(row i), RMS over the row's in_features entries.
    - row_norm_cv / row_norm_max_median, col_norm_cv / col_norm_max_median: spread of the L2 norms of
      output rows and of input columns (cv = population std / mean).
    - outlier_cols@6, outlier_col_frac@6: count and share of input columns whose L2 norm exceeds
      6 x the median column norm (channels that pruning and quantization must treat with care).
    - nm24_kept_l1 / nm24_kept_l2: share of sum |W| / sum W^2 kept by the best 2:4 pattern along the input dim.
    """
    W = W.detach().to(torch.float64)
    A = W.abs()
    n = W.numel()
    rms = W.pow(2).mean(dim=1, keepdim=True).sqrt()
    stats = {"zero_frac": torch.count_nonzero(W == 0).item() / n}
    for t in NEAR_ZERO_THRESHOLDS:
        stats[Metric("near_zero_frac", t).label] = torch.count_nonzero(A <= t * rms).item() / n
    col_norms = W.norm(dim=0)
    stats |= _spread(W.norm(dim=1), "row_norm") | _spread(col_norms, "col_norm")
    n_outliers = torch.count_nonzero(col_norms > OUTLIER_RATIO * torch.quantile(col_norms, 0.5)).item()
    stats[Metric("outlier_cols", OUTLIER_RATIO).label] = float(n_outliers)
    stats[Metric("outlier_col_frac", OUTLIER_RATIO).label] = n_outliers / W.shape[1]
    stats["nm24_kept_l1"], stats["nm24_kept_l2"] = nm_readiness(W)
    return stats


def weight_table(named_weights: Iterable[tuple[int, str, torch.Tensor]], note: str = "") -> pd.DataFrame:
    """Tidy table `layer, site, metric, threshold, value, n_params` over (layer, site, W) triples.

    `note` says where the weights came from (e.g. "weights dequantised from Q4_1 GGUF") and is kept
    in `df.attrs["note"]`, because statistics of dequantised weights describe the quantiser too.
    """
    rows = []
    for layer, site, W in named_weights:
        for key, value in weight_stats(W).items():
            m = Metric.parse(key)
            rows.append((layer, site, m.name, m.threshold, value, W.numel()))
    df = pd.DataFrame(rows, columns=["layer", "site", "metric", "threshold", "value", "n_params"])
    df.attrs["note"] = note
    return df

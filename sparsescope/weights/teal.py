"""TEAL-style activation sparsity (Liu et al. 2024): zero the inputs of a linear whose magnitude is below a threshold.

One threshold per tensor (per layer and site), as in TEAL: a per-channel threshold would force the same
sparsity on every channel and zero large entries of outlier channels, defeating the magnitude criterion.
"""

import torch

from sparsescope.weights._checks import check_sparsity


def calibrate_threshold(samples: torch.Tensor, sparsity: float) -> float:
    """The |x| value t such that a fraction `sparsity` of the calibration entries has |x| < t.

    `samples` is [N, in] (padding tokens already removed). t is the k-th smallest |x|, k = round(sparsity * numel),
    so without ties exactly k entries fall below it; sparsity 0 gives t = min |x| (nothing zeroed).
    """
    check_sparsity(sparsity, "calibrate_threshold")
    flat = samples.detach().abs().reshape(-1).float()
    k = min(round(sparsity * flat.numel()), flat.numel() - 1)
    return flat.kthvalue(k + 1).values.item()


def threshold_input(x: torch.Tensor, t: float) -> torch.Tensor:
    """Zero entries with |x| < t, keep the others unchanged."""
    return torch.where(x.abs() < t, torch.zeros_like(x), x)

"""The ``teal`` lever: TEAL-style activation sparsity (Liu et al. 2024) zeroes the inputs of a linear whose magnitude
is below a threshold.

One threshold per tensor (per layer and site), as in TEAL: a per-channel threshold would force the same
sparsity on every channel and zero large entries of outlier channels, defeating the magnitude criterion.
"""

import torch

from sparsescope.intervene import LinearContext, Lever, register_lever
from sparsescope.levers._checks import calibration_stat, check_sparsity
from sparsescope.record.calibration import quantile_threshold


def teal_threshold(samples: torch.Tensor, sparsity: float) -> float:
    """The |x| value t such that a fraction `sparsity` of the calibration entries has |x| < t (`quantile_threshold`
    of |samples|: without ties exactly round(sparsity · numel) entries fall below it; sparsity 0 zeroes nothing)."""
    check_sparsity(sparsity, "teal_threshold")
    return quantile_threshold(samples.abs(), sparsity)


def threshold_input(x: torch.Tensor, t: float) -> torch.Tensor:
    """Zero entries with |x| < t, keep the others unchanged."""
    return torch.where(x.abs() < t, torch.zeros_like(x), x)


class TealLever(Lever):
    """Zeroes inputs with |x| below a calibrated threshold and counts the non-zero inputs it lets through."""

    def __init__(self, threshold: float, sparsity: float):
        self.threshold, self.sparsity = threshold, sparsity
        self.nonzero = 0
        self.total = 0

    @property
    def input_density(self) -> float:
        """Share of non-zero inputs seen since the lever was built (1.0 before any input)."""
        return self.nonzero / self.total if self.total else 1.0

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        y = threshold_input(x, self.threshold)
        self.nonzero += int(torch.count_nonzero(y))
        self.total += y.numel()
        return y


@register_lever("teal")
def teal(ctx: LinearContext, sparsity: float = 0.5) -> TealLever:
    """TEAL: one magnitude threshold per linear, the ``sparsity`` quantile of calibration |x|."""
    check_sparsity(sparsity, f"teal {ctx.name}")
    return TealLever(teal_threshold(calibration_stat(ctx, "abs_sample", "teal"), sparsity), sparsity)

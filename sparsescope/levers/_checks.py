"""Input checks shared by the levers: one place for the messages users see."""

import torch

from sparsescope.errors import UserError
from sparsescope.intervene import LinearContext


def check_weight(W: torch.Tensor, who: str) -> None:
    """Refuse anything that is not a 2-D weight shaped [out_features, in_features] like nn.Linear.weight."""
    if W.ndim != 2:
        raise UserError(
            f"{who}: expected a weight shaped [out_features, in_features], got shape {tuple(W.shape)}; "
            "pass nn.Linear.weight (reshape other tensors to 2-D first)"
        )


def check_sparsity(sparsity: float, who: str) -> None:
    """Sparsity is the share of entries removed: 0 keeps everything, 1 would remove everything."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"{who}: sparsity must lie in [0, 1), got {sparsity}; pass e.g. 0.5 to remove half the entries")


def calibration_stat(ctx: LinearContext, key: str, lever: str) -> torch.Tensor:
    """The per-linear calibration statistic ``key`` a lever needs, or one line saying how to provide it."""
    stats = ctx.calibration or {}
    if key not in stats or stats[key].numel() == 0:
        raise UserError(f"lever {lever!r} needs calibration statistics ({key}) for {ctx.name}; "
                        "pass calibration=calibrate(lm, texts) to apply() with a non-empty calibration text")
    return stats[key]

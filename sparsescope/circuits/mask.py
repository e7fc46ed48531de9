"""A learned node mask: a continuous relaxation (keep = sigmoid(θ)) trained to keep the metric with few nodes.

Loss per step = ``(1 − f(keep))² + λ · mean(keep)``: the squared faithfulness gap (so the masked model matches the
full one, not overshoots it) plus an L1 penalty on the relaxed mask (keep ≥ 0, so its L1 norm is its sum — the
convex surrogate of L0). Nodes are ranked by the final θ; the faithfulness curve then binarises the top-k, exactly
like the attribution rankings, so all methods are scored on one footing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsescope.circuits.attribution import frozen
from sparsescope.circuits.patch import Patcher
from sparsescope.circuits.scores import Ends
from sparsescope.errors import UserError


@dataclass
class MaskConfig:
    """How the mask is trained."""

    steps: int = 60  # optimiser steps (each one forward + backward over the discovery prompts)
    lr: float = 0.1  # Adam learning rate on the logits θ
    l1: float = 0.5  # λ: weight of the mean relaxed mask against the squared faithfulness gap
    init: float = 3.0  # initial θ (sigmoid(3) ≈ 0.95: start near the full model)
    seed: int = 0  # torch seed for the (deterministic) optimisation


def learn_mask(patcher: Patcher, prepared, e: Ends, config: MaskConfig | None = None,
               progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Train θ on the discovery prompts; returns θ (higher = more needed)."""
    cfg = config or MaskConfig()
    if cfg.steps < 1 or cfg.l1 < 0:
        raise UserError(f"mask training needs steps ≥ 1 and l1 ≥ 0; got steps={cfg.steps}, l1={cfg.l1}")
    torch.manual_seed(cfg.seed)
    theta = torch.full((patcher.n_nodes,), cfg.init, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    n = sum(len(b.last) for b, _ in prepared)
    with frozen(patcher.lm.model), torch.enable_grad():
        for _ in range(cfg.steps):
            opt.zero_grad()
            keep = torch.sigmoid(theta)
            m = sum(patcher.forward(b, keep, refs).sum() for b, refs in prepared) / n
            f = (m - e.empty) / (e.full - e.empty)
            loss = (1 - f) ** 2 + cfg.l1 * keep.mean()
            loss.backward()
            opt.step()
            if progress:
                progress(1)
    return theta.detach()

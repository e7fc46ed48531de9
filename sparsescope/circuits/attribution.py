"""Node effects: exact activation patching, attribution patching (EAP) and EAP with integrated gradients.

Every method returns one number per node, the (estimated) change of the task metric when that node alone is
replaced by its reference: ``effect_i = m(patch i) − m(clean)``; negative means the node carries the behaviour.

* ``exact``   — one patched forward per node: the ground truth, N forwards.
* ``eap``     — first-order Taylor estimate ``(r_i − a_i) · ∂m/∂a_i`` at the clean run: 1 forward + 1 backward
  (Syed et al. 2023).
* ``eap_ig``  — the same difference times the gradient averaged over ``steps`` runs whose input embeddings move
  from the corrupted to the clean prompt (Hanna et al. 2024; MIB's strongest attribution method).
  ``steps`` forward+backward passes.
* ``eap_ig_exact`` — two stages: EAP-IG ranks every node, then exact patching re-scores the ``refine`` nodes at the
  top of that ranking (their scores become exact effects, on the same scale): ``steps`` gradient passes plus
  ``refine`` forwards, so the circuit's members are decided by exact effects where it matters most.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from sparsescope.circuits.patch import Patcher, final_logits
from sparsescope.errors import UserError

METHODS = ("exact", "eap", "eap_ig", "eap_ig_exact")


@contextmanager
def frozen(model: torch.nn.Module):
    """Weights without gradients while attributing: only node coefficients get them (less memory, less time)."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def exact(patcher: Patcher, prepared, progress: Callable[[int], None] | None = None,
          nodes: list[int] | None = None) -> torch.Tensor:
    """Patch each node alone and measure the metric change (one forward per node and batch); with ``nodes``, only
    those (the others are NaN) — for validating attribution on a subset when N forwards are too many. A node whose
    reference equals its clean activation everywhere gets exactly 0 without a forward (``Patcher.moved``)."""
    base = patcher.metric(prepared)
    effects = torch.full((patcher.n_nodes,), float("nan"))
    moved = patcher.moved(prepared) if isinstance(patcher, Patcher) else torch.ones(patcher.n_nodes, dtype=torch.bool)
    for i in range(patcher.n_nodes) if nodes is None else nodes:
        keep = torch.ones(patcher.n_nodes)
        keep[i] = 0.0
        effects[i] = patcher.metric(prepared, keep) - base if moved[i] else 0.0
        if progress:
            progress(1)
    return effects


def _embeddings(patcher: Patcher, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out: list[torch.Tensor] = []
    handle = patcher.lm.sites.attach(0, "hook_resid_pre", lambda x: out.append(x.detach().clone()))
    try:
        with torch.no_grad():
            final_logits(patcher.lm, ids, mask)
    finally:
        handle.remove()
    return out[0]


def attribute(patcher: Patcher, prepared, steps: int = 1,
              progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """EAP (``steps=1``) or EAP-IG (``steps > 1``): ``Σ (r − a) · mean_α ∂m/∂a`` per node, mean of prompts."""
    if steps < 1:
        raise UserError(f"integrated-gradient steps must be ≥ 1; got {steps}")
    scores = torch.zeros(patcher.n_nodes)
    n = 0
    with frozen(patcher.lm.model):
        for batch, refs in prepared:
            clean = patcher.capture(batch.clean, batch.mask)
            direction = patcher.directions(refs, clean)
            if steps > 1:
                e_clean = _embeddings(patcher, batch.clean, batch.mask)
                e_corrupt = _embeddings(patcher, batch.corrupt, batch.mask)
            for k in range(1, steps + 1):  # right Riemann sum: α = 1/steps … 1 (α = 1 is the clean input)
                coef = torch.zeros(patcher.n_nodes, requires_grad=True)
                embed = None if steps == 1 else e_corrupt + (k / steps) * (e_clean - e_corrupt)
                with torch.enable_grad():
                    metric = patcher.forward(batch, direction=direction, coef=coef, embed=embed).sum()
                    (grad,) = torch.autograd.grad(metric, coef)
                scores += grad / steps
                if progress:
                    progress(1)
            n += len(batch.last)
    return scores / n


def refined(patcher: Patcher, prepared, steps: int, refine: int,
            progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """EAP-IG for every node, then exact patching of the ``refine`` nodes with the largest |EAP-IG| score, whose
    scores are replaced by their exact effects."""
    scores = attribute(patcher, prepared, steps, progress)
    top = torch.argsort(scores.abs(), descending=True, stable=True)[: max(0, min(refine, patcher.n_nodes))]
    scores[top] = exact(patcher, prepared, progress, top.tolist())[top]
    return scores


def effects(patcher: Patcher, prepared, method: str, steps: int = 5,
            progress: Callable[[int], None] | None = None, refine: int = 0) -> torch.Tensor:
    """One effect per node by ``method`` (``exact``, ``eap``, ``eap_ig`` or ``eap_ig_exact`` with ``refine``
    exact-patched nodes)."""
    if method == "exact":
        return exact(patcher, prepared, progress)
    if method == "eap":
        return attribute(patcher, prepared, 1, progress)
    if method == "eap_ig":
        return attribute(patcher, prepared, steps, progress)
    if method == "eap_ig_exact":
        return refined(patcher, prepared, steps, refine, progress)
    raise UserError(f"unknown method {method!r}; choose from: {', '.join(METHODS)} (or 'mask' for a learned mask)")


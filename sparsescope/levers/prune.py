"""The ``prune`` lever: training-free pruning masks (True = keep) applied to a linear's weight, and the
global-magnitude planner. W is [out_features, in_features] and is never modified by the mask functions.

Ties in a score are broken deterministically: among equal scores the entry with the lower
(flattened) index is kept, so the same input always gives the same mask.
"""

from __future__ import annotations

import math
import zlib

import torch

from sparsescope.errors import UserError
from sparsescope.intervene import LinearContext, Lever, Plan, Rule, register_lever
from sparsescope.levers._checks import calibration_stat, check_sparsity, check_weight
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import linear_weight

PRUNE_METHODS = ("magnitude", "wanda", "random")


def n_keep(n: int, sparsity: float) -> int:
    """ceil((1 - sparsity) * n), immune to float noise such as (1 - 0.7) * 10 = 3.0000000000000004."""
    return math.ceil((1.0 - sparsity) * n * (1.0 - 1e-12))


def _keep_largest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask keeping the k largest entries of each row of a 2-D score; lower index wins ties.

    Selection (kthvalue) instead of a full sort: 4x faster on a 16M-entry layer, same mask as a stable argsort.
    """
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    kth_largest = score.kthvalue(score.shape[-1] - k + 1, dim=-1, keepdim=True).values
    above, tie = score > kth_largest, score == kth_largest
    return above | (tie & (tie.cumsum(-1) <= k - above.sum(-1, keepdim=True)))


def magnitude_mask(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ceil((1 - sparsity) * n) largest |W| of the whole layer."""
    check_weight(W, "magnitude_mask")
    check_sparsity(sparsity, "magnitude_mask")
    return _keep_largest(W.detach().abs().reshape(1, -1), n_keep(W.numel(), sparsity)).reshape(W.shape)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One |W| threshold across all layers: ceil((1 - sparsity) * total) weights kept in all.

    Layers with small weights lose more; ties across layers go to the layer listed first.
    """
    check_sparsity(sparsity, "global_magnitude_masks")
    if not weights:
        raise UserError("global_magnitude_masks: no weights given; pass a dict {name: W} with at least one weight")
    for name, W in weights.items():
        check_weight(W, f"global_magnitude_masks[{name}]")
    flat = torch.cat([W.detach().abs().float().reshape(-1) for W in weights.values()])
    keep = _keep_largest(flat.reshape(1, -1), n_keep(flat.numel(), sparsity)).reshape(-1)
    parts = keep.split([W.numel() for W in weights.values()])
    return {name: part.reshape(W.shape) for (name, W), part in zip(weights.items(), parts)}


def wanda_score(W: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Wanda importance |W_ij| * ||x_j||_2 (Sun et al. 2023); act_norm[j]: L2 norm of input j over calibration."""
    check_weight(W, "wanda_score")
    if act_norm.shape != (W.shape[1],):
        raise UserError(
            f"wanda: act_norm has shape {tuple(act_norm.shape)} but W has in_features={W.shape[1]}; "
            "pass one L2 norm per input channel, shaped [in_features]"
        )
    return W.detach().abs() * act_norm.to(W.device, W.dtype)


def wanda_mask(W: torch.Tensor, act_norm: torch.Tensor, sparsity: float, per_output: bool = True) -> torch.Tensor:
    """Prune by Wanda score, compared within each output row (per_output, as in the paper) or over the whole layer."""
    check_sparsity(sparsity, "wanda_mask")
    score = wanda_score(W, act_norm)
    if per_output:
        return _keep_largest(score, n_keep(W.shape[1], sparsity))
    return _keep_largest(score.reshape(1, -1), n_keep(W.numel(), sparsity)).reshape(W.shape)


def nm_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep exactly the n highest-scoring of each group of m consecutive inputs (N:M sparsity, e.g. 2:4).

    `score` is [out_features, in_features]: |W| for magnitude N:M, `wanda_score(W, act_norm)` for Wanda N:M.
    Widths that m does not divide are refused, not padded.
    """
    check_weight(score, "nm_mask")
    if not 1 <= n < m:
        raise UserError(f"nm_mask: need 1 <= N < M, got N={n}, M={m}; use e.g. N=2, M=4")
    out_features, in_features = score.shape
    if in_features % m:
        raise UserError(
            f"nm_mask: in_features={in_features} is not divisible by M={m}; choose an M that divides "
            f"{in_features}, or zero-pad the input dimension to a multiple of {m} yourself (sparsescope does not pad)"
        )
    groups = score.detach().reshape(out_features * in_features // m, m)
    return _keep_largest(groups, n).reshape(out_features, in_features)


def random_mask(W: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Keep ceil((1 - sparsity) * n) weights at uniformly random positions: the baseline every criterion must beat."""
    check_weight(W, "random_mask")
    check_sparsity(sparsity, "random_mask")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(W.numel(), generator=generator)[: n_keep(W.numel(), sparsity)]
    mask = torch.zeros(W.numel(), dtype=torch.bool)
    mask[keep] = True
    return mask.reshape(W.shape).to(W.device)


def parse_nm(nm: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"2:4"`` (or ``(2, 4)``) → ``(2, 4)``; refuses anything else, and N ≥ M."""
    try:
        n, m = (int(v) for v in (nm.split(":") if isinstance(nm, str) else nm))
    except (ValueError, TypeError):
        raise UserError(f"nm={nm!r} is not an N:M pattern; write it like '2:4'") from None
    if not 1 <= n < m:
        raise UserError(f"nm={nm!r}: need 1 ≤ N < M (keep N of every M weights); use e.g. '2:4'")
    return n, m


class PruneLever(Lever):
    """Zeroes the weights a training-free criterion drops; ``mask`` (True = kept) is what it last applied."""

    def __init__(self, ctx: LinearContext, method: str, sparsity: float | None, nm: tuple[int, int] | None,
                 seed: int, act_norm: torch.Tensor | None):
        self.name, self.method, self.sparsity, self.nm, self.act_norm = ctx.name, method, sparsity, nm, act_norm
        self.seed = zlib.crc32(f"{seed}:{ctx.name}".encode())  # a different random pattern per linear
        self.mask: torch.Tensor | None = None

    def _score(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "magnitude":
            return w.abs()
        if self.method == "wanda":
            return wanda_score(w, self.act_norm)
        return torch.rand(w.shape, generator=torch.Generator().manual_seed(self.seed)).to(w.device)

    def _mask(self, w: torch.Tensor) -> torch.Tensor:
        if self.nm is not None:
            return nm_mask(self._score(w), *self.nm)
        if self.method == "magnitude":
            return magnitude_mask(w, self.sparsity)
        if self.method == "wanda":
            return wanda_mask(w, self.act_norm, self.sparsity)
        return random_mask(w, self.sparsity, seed=self.seed)

    def transform_weight(self, w: torch.Tensor) -> torch.Tensor:
        self.mask = self._mask(w)
        return w.masked_fill(~self.mask, 0.0)


@register_lever("prune")
def prune(ctx: LinearContext, method: str = "magnitude", sparsity: float | None = None,
          nm: str | None = None, seed: int = 0) -> PruneLever:
    """Unstructured pruning to ``sparsity`` (per layer) or N:M along the input dim (``nm="2:4"``, no sparsity)."""
    if method not in PRUNE_METHODS:
        raise UserError(f"unknown prune method {method!r}; use one of {', '.join(PRUNE_METHODS)}")
    pattern = None
    if nm is not None:
        if sparsity is not None:
            raise UserError("prune takes either sparsity or nm, not both (N:M fixes the sparsity at 1 - N/M)")
        pattern = parse_nm(nm)
        if ctx.in_features % pattern[1]:
            raise UserError(f"{ctx.name}: in_features={ctx.in_features} is not divisible by M={pattern[1]}; "
                            f"choose an N:M pattern whose M divides it, or leave this site out of the rule")
    elif sparsity is None:
        raise UserError("prune needs sparsity (e.g. 0.5) or nm (e.g. '2:4')")
    else:
        check_sparsity(sparsity, f"prune {ctx.name}")
    act_norm = calibration_stat(ctx, "act_norm", "prune (wanda)") if method == "wanda" else None
    if act_norm is not None and act_norm.shape != (ctx.in_features,):
        raise UserError(f"{ctx.name}: calibration act_norm has shape {tuple(act_norm.shape)}, expected "
                        f"({ctx.in_features},); calibrate this same model again")
    return PruneLever(ctx, method, sparsity, pattern, seed, act_norm)


def global_magnitude_plan(lm: LoadedModel, sparsity: float, layers: list[int] | None = None,
                          sites: list[str] | None = None) -> Plan:
    """A plan of per-linear magnitude pruning whose sparsities come from one |W| threshold over all chosen linears.

    Global magnitude needs every weight at once, so it is planned here (one rule per linear) instead of a lever.
    """
    check_sparsity(sparsity, "global magnitude")
    chosen = [(layer, ws) for layer, ws in lm.sites.linear_names()
              if (layers is None or layer in layers) and (sites is None or ws in sites)]
    if not chosen:
        raise UserError("global magnitude: the chosen layers and sites match no linear; check --layers/--sites")
    weights = {(layer, ws): linear_weight(lm.sites.linear(layer, ws)) for layer, ws in chosen}
    masks = global_magnitude_masks(weights, sparsity)
    rules = []
    for (layer, ws), mask in masks.items():
        local = 1.0 - mask.sum().item() / mask.numel()
        if local >= 1.0:
            raise UserError(f"global magnitude at sparsity {sparsity} removes every weight of blocks.{layer}.{ws}; "
                            "choose a lower sparsity")
        rules.append(Rule("prune", {"method": "magnitude", "sparsity": local}, layers=[layer], sites=[ws]))
    return Plan(rules, name=f"global magnitude {sparsity:g}")

"""The weight levers for ``sparsescope.intervene``: prune, quant, act_quant and teal, plus the global-magnitude planner.

Every factory validates its parameters against the linear before anything changes, so a bad plan leaves the model
untouched; ``intervene.restore`` puts the original weights back bit-exactly. Levers that matter to the energy model
expose what it needs: ``QuantLever.weight_bits`` / ``bits_per_param``, ``ActQuantLever.act_bits`` and the input
density ``TealLever`` measures while it runs.
"""

from __future__ import annotations

import math
import zlib

import torch

from sparsescope.errors import UserError
from sparsescope.intervene import LinearContext, Lever, Plan, Rule, register_lever
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import linear_weight
from sparsescope.weights._checks import check_sparsity
from sparsescope.weights.prune import (
    global_magnitude_masks,
    magnitude_mask,
    nm_mask,
    random_mask,
    wanda_mask,
    wanda_score,
)
from sparsescope.weights.quant import bytes_per_param, quantize_activation, quantize_weight, ternary
from sparsescope.weights.teal import calibrate_threshold, threshold_input

PRUNE_METHODS = ("magnitude", "wanda", "random")
WEIGHT_FORMATS = (8, 4, "ternary", "fp16")
ACT_FORMATS = (8, 4, "fp16")
TERNARY_BITS = 2  # a ternary weight is stored in 2 bits (as BitNet b1.58 CPU kernels do), plus one fp16 scale
SCALE_BITS = 16


def _calibration(ctx: LinearContext, key: str, lever: str) -> torch.Tensor:
    stats = ctx.calibration or {}
    if key not in stats or stats[key].numel() == 0:
        raise UserError(f"lever {lever!r} needs calibration statistics ({key}) for {ctx.name}; "
                        "pass calibration=calibrate(lm, texts) to apply() with a non-empty calibration text")
    return stats[key]


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
    act_norm = _calibration(ctx, "act_norm", "prune (wanda)") if method == "wanda" else None
    if act_norm is not None and act_norm.shape != (ctx.in_features,):
        raise UserError(f"{ctx.name}: calibration act_norm has shape {tuple(act_norm.shape)}, expected "
                        f"({ctx.in_features},); calibrate this same model again")
    return PruneLever(ctx, method, sparsity, pattern, seed, act_norm)


class QuantLever(Lever):
    """Fake-quantizes the weight; ``weight_bits`` is the code width, ``bits_per_param`` adds the scales."""

    def __init__(self, ctx: LinearContext, bits: int | str, granularity: str, group_size: int):
        self.bits, self.granularity, self.group_size = bits, granularity, group_size
        if bits == "fp16":
            self.weight_bits, self.bits_per_param = 16, 16.0
        elif bits == "ternary":
            self.weight_bits = TERNARY_BITS
            self.bits_per_param = TERNARY_BITS + SCALE_BITS / (ctx.in_features * ctx.out_features)
        else:
            self.weight_bits = bits
            self.bits_per_param = 8 * bytes_per_param(bits, granularity, group_size, SCALE_BITS, ctx.in_features)

    def transform_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == "fp16":
            return w.half().to(w.dtype)
        if self.bits == "ternary":
            return ternary(w)
        return quantize_weight(w, self.bits, self.granularity, self.group_size)


@register_lever("quant")
def quant(ctx: LinearContext, bits: int | str = 8, granularity: str = "per_channel",
          group_size: int = 64) -> QuantLever:
    """Symmetric absmax int8/int4 weights (one scale per output row or per ``group_size`` inputs), ternary or fp16.

    SmolLM2's widths (576, 1536) need ``group_size`` 64 or 32; 128 divides neither 576 nor 192.
    """
    if bits not in WEIGHT_FORMATS:
        raise UserError(f"quant: bits={bits!r} is not supported; choose one of {', '.join(map(str, WEIGHT_FORMATS))}")
    if isinstance(bits, int):
        if granularity not in ("per_channel", "group"):
            raise UserError(f"quant: granularity={granularity!r} is unknown; use per_channel or group")
        if granularity == "group" and (group_size < 1 or ctx.in_features % group_size):
            raise UserError(f"quant {ctx.name}: group_size={group_size} does not divide in_features="
                            f"{ctx.in_features}; use a divisor such as {math.gcd(ctx.in_features, group_size)}, "
                            "or granularity per_channel")
    return QuantLever(ctx, bits, granularity, group_size)


class ActQuantLever(Lever):
    """Fake-quantizes the linear's input per token (int8/int4 absmax) or rounds it to fp16."""

    def __init__(self, bits: int | str):
        self.bits = bits
        self.act_bits = 16 if bits == "fp16" else bits

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().to(x.dtype) if self.bits == "fp16" else quantize_activation(x, self.bits)


@register_lever("act_quant")
def act_quant(ctx: LinearContext, bits: int | str = 8) -> ActQuantLever:
    """Per-token activation quantization of the linear's input."""
    if bits not in ACT_FORMATS:
        raise UserError(f"act_quant: bits={bits!r} is not supported; choose one of {', '.join(map(str, ACT_FORMATS))}")
    return ActQuantLever(bits)


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
    return TealLever(calibrate_threshold(_calibration(ctx, "abs_sample", "teal"), sparsity), sparsity)


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

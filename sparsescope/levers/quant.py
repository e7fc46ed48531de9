"""The ``quant`` (weights) and ``act_quant`` (inputs) levers: fake quantization (quantize, then dequantize back
to float) of weights and activations.

Integer formats are symmetric absmax without a zero-point: q = clamp(round(w / scale), -qmax, qmax),
qmax = 2^(bits-1) - 1 (127 for int8, 7 for int4; the most negative code is unused), scale = absmax / qmax
over the scale's block. Blocks whose absmax is 0 dequantize to 0.
"""

from __future__ import annotations

import math

import torch

from sparsescope.errors import UserError
from sparsescope.intervene import LinearContext, Lever, register_lever
from sparsescope.levers._checks import check_weight

SUPPORTED_BITS = (8, 4)
GRANULARITIES = ("per_channel", "group")


def _check_bits(bits: int, who: str) -> int:
    if bits not in SUPPORTED_BITS:
        raise UserError(
            f"{who}: bits={bits} is not supported; choose one of {list(SUPPORTED_BITS)} (ternary: use ternary())"
        )
    return 2 ** (bits - 1) - 1


def _fake_quant(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric absmax fake quantization with one scale per row of x (last dim is the block)."""
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((x32 / safe).round().clamp(-qmax, qmax) * scale).to(x.dtype)


def quantize_weight(
    W: torch.Tensor, bits: int, granularity: str = "per_channel", group_size: int = 128
) -> torch.Tensor:
    """Fake-quantize W [out, in]: one scale per output row ("per_channel") or per `group_size` inputs ("group")."""
    check_weight(W, "quantize_weight")
    qmax = _check_bits(bits, "quantize_weight")
    out_features, in_features = W.shape
    if granularity == "per_channel":
        return _fake_quant(W.detach(), qmax)
    if granularity != "group":
        raise UserError(
            f"quantize_weight: granularity={granularity!r} is unknown; choose one of {list(GRANULARITIES)}"
        )
    if group_size < 1 or in_features % group_size:
        raise UserError(
            f"quantize_weight: group_size={group_size} does not divide in_features={in_features}; "
            f"choose a group size that divides it (e.g. {math.gcd(in_features, max(group_size, 1))}) "
            "or granularity='per_channel'"
        )
    groups = W.detach().reshape(out_features, in_features // group_size, group_size)
    return _fake_quant(groups, qmax).reshape(out_features, in_features)


def ternary(W: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58 absmean ternary: alpha = mean|W| over the tensor, W -> clamp(round(W / alpha), -1, 1) * alpha."""
    check_weight(W, "ternary")
    W32 = W.detach().float()
    alpha = W32.abs().mean()
    if alpha == 0:
        return torch.zeros_like(W)
    return ((W32 / alpha).round().clamp(-1, 1) * alpha).to(W.dtype)


def quantize_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token symmetric absmax fake quantization of activations [..., features]: one scale per token vector."""
    return _fake_quant(x, _check_bits(bits, "quantize_activation"))


def bytes_per_param(
    bits: int,
    granularity: str = "per_channel",
    group_size: int = 128,
    scale_bits: int = 16,
    in_features: int | None = None,
) -> float:
    """Bytes per weight with scales: (bits + scale_bits / block) / 8, block = group_size, or in_features per channel."""
    _check_bits(bits, "bytes_per_param")
    if granularity == "group":
        block = group_size
    elif granularity == "per_channel":
        if in_features is None:
            raise UserError(
                "bytes_per_param: per_channel scales are shared by a row, so in_features is needed; "
                "pass in_features=W.shape[1]"
            )
        block = in_features
    else:
        raise UserError(
            f"bytes_per_param: granularity={granularity!r} is unknown; choose one of {list(GRANULARITIES)}"
        )
    return (bits + scale_bits / block) / 8


WEIGHT_FORMATS = (8, 4, "ternary", "fp16")
ACT_FORMATS = (8, 4, "fp16")
TERNARY_BITS = 2  # a ternary weight is stored in 2 bits (as BitNet b1.58 CPU kernels do), plus one fp16 scale
SCALE_BITS = 16


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

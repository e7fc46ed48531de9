"""Adaptive-threshold integer spikes (SpikingBrain W8ASpike style) and their expansion over time steps.

A token vector x becomes integer spike counts s = round(x / v_th) with v_th = mean(|x|) / k, so x ≈ s·v_th.
The integers are then spread over T steps of ±1 spikes by one of three codings:

- ``binary``:  T = max s, spike at steps 0..s-1; needs s ≥ 0 (use ``ternary`` or ``bitwise`` for signed x).
- ``ternary``: T = max |s|, spikes of value sign(s) at steps 0..|s|-1.
- ``bitwise``: T = ⌈log2(max |s| + 1)⌉, step t carries bit t of |s| (LSB first), the spike's value carries the
  sign (sign-magnitude): 5 → [1, 0, 1], -5 → [-1, 0, -1], 255 → 8 steps.

In every coding s = Σ_t w_t · spikes[t] with w_t = 1 (binary, ternary) or 2**t (bitwise). T is one number for
the whole tensor (the steps the slowest token needs, or the ``steps`` you pass).
"""

import functools

import torch

from sparsescope.cost import CODINGS
from sparsescope.errors import UserError


def _check_coding(coding: str) -> None:
    if coding not in CODINGS:
        raise UserError(f"unknown spike coding {coding!r}; use one of {', '.join(CODINGS)}")


def _check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 1:
        raise UserError(f"steps must be a whole number ≥ 1, got {steps!r}")


def _check_integer(s: torch.Tensor) -> None:
    if s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
        raise UserError(f"spike counts must be an integer tensor, got {s.dtype}; pass the s returned by encode()")


def _check_signs(s: torch.Tensor, coding: str) -> None:
    if coding == "binary" and s.numel() and s.min() < 0:
        raise UserError("binary coding needs s ≥ 0 but s has negative entries; use coding 'ternary' or 'bitwise'")


def encode(x: torch.Tensor, k: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer spike counts per token (last dim): v_th = mean(|x|)/k, s = round(x/v_th) (int32, half to even).

    Returns ``(s, v_th)`` with v_th of shape ``[..., 1]``, computed in at least float32 (half-precision x is
    promoted). A token of zeros gets v_th = 0 and s = 0 (no NaN).
    """
    if not k > 0:
        raise UserError(f"k must be > 0 (v_th = mean|x|/k), got {k!r}; SpikingBrain uses k = 3")
    if not x.is_floating_point():
        raise UserError(f"x must be a floating-point tensor, got {x.dtype}")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    v_th = x.abs().mean(dim=-1, keepdim=True) / k
    s = torch.round(x / torch.where(v_th > 0, v_th, torch.ones_like(v_th)))
    return s.to(torch.int32), v_th


def decode(s: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """The value the spikes stand for: x̂ = s·v_th (in v_th's dtype)."""
    _check_integer(s)
    return s.to(v_th.dtype) * v_th


@functools.cache
def _popcount_table() -> torch.Tensor:
    """Set bits of every 16-bit number (int64 [65536])."""
    r, table = torch.arange(1 << 16), torch.zeros(1 << 16, dtype=torch.int64)
    for _ in range(16):
        table += r & 1
        r = r >> 1
    return table


def _popcount(a: torch.Tensor) -> torch.Tensor:
    """Number of set bits of a non-negative int64 tensor: a 16-bit lookup table per 16-bit chunk."""
    table = _popcount_table()
    count = table[a & 0xFFFF]
    a = a >> 16
    while bool((a > 0).any()):
        count += table[a & 0xFFFF]
        a = a >> 16
    return count


def spike_counts(s: torch.Tensor, coding: str) -> torch.Tensor:
    """Spikes each entry of s emits over all steps: |s| (binary, ternary) or popcount(|s|) (bitwise)."""
    _check_coding(coding)
    _check_integer(s)
    _check_signs(s, coding)
    a = s.abs().to(torch.int64)
    return _popcount(a) if coding == "bitwise" else a


def steps_needed(s: torch.Tensor, coding: str) -> int:
    """Time steps needed to express every entry of s exactly (at least 1)."""
    _check_coding(coding)
    _check_integer(s)
    _check_signs(s, coding)
    top = int(s.abs().max()) if s.numel() else 0
    return max(1, top.bit_length() if coding == "bitwise" else top)


def max_level(coding: str, steps: int) -> int:
    """Largest |s| that ``steps`` steps can express: steps (binary, ternary) or 2**steps - 1 (bitwise)."""
    _check_coding(coding)
    _check_steps(steps)
    return 2**steps - 1 if coding == "bitwise" else steps


def clamp(s: torch.Tensor, coding: str, steps: int) -> torch.Tensor:
    """Clip s to what ``steps`` steps can express (the lossy way to bound latency), e.g. |s| ≤ 2**bits - 1."""
    _check_integer(s)
    top = max_level(coding, steps)
    return s.clamp(0 if coding == "binary" else -top, top)


def _resolve_steps(s: torch.Tensor, coding: str, steps: int | None) -> int:
    """T: the steps s needs, or the given ``steps`` if they suffice."""
    need = steps_needed(s, coding)
    if steps is None:
        return need
    _check_steps(steps)
    if steps < need:
        raise UserError(f"s needs {need} steps in {coding} coding but steps={steps}; raise steps or clamp(s) first")
    return int(steps)


def expand(s: torch.Tensor, coding: str, steps: int | None = None, wta: int | None = None) -> torch.Tensor:
    """Spread integer counts over time: int8 spikes ``[T, *s.shape]`` with values in {-1, 0, 1}.

    ``steps`` fixes T (≥ the steps s needs; see :func:`clamp`). ``wta`` (k-winners-take-all) keeps, at each step
    and for each token, only the ``wta`` spiking channels with the largest |s| (lossy; ties go to torch.topk).
    """
    steps = _resolve_steps(s, coding, steps)
    a, sign = s.abs().to(torch.int64), s.sign().to(torch.int8)
    t = torch.arange(steps).view(-1, *([1] * s.dim()))
    fires = ((a >> t) & 1).bool() if coding == "bitwise" else a > t
    spikes = fires.to(torch.int8) * sign
    if wta is not None:
        spikes = _winners(spikes, a, wta)
    return spikes


def _winners(spikes: torch.Tensor, a: torch.Tensor, wta: int) -> torch.Tensor:
    """Keep per step and token the ``wta`` firing channels with the largest |s|."""
    if int(wta) != wta or wta < 1:
        raise UserError(f"wta must be a whole number ≥ 1 (spikes kept per token per step), got {wta!r}")
    if a.dim() == 0 or wta >= a.shape[-1]:
        return spikes
    priority = torch.where(spikes != 0, a.unsqueeze(0), -1)
    keep = torch.zeros_like(spikes, dtype=torch.bool)
    keep.scatter_(-1, priority.topk(wta, dim=-1).indices, True)
    return torch.where(keep, spikes, 0).to(torch.int8)


def collapse(spikes: torch.Tensor, coding: str) -> torch.Tensor:
    """Inverse of :func:`expand`: s = Σ_t w_t·spikes[t] (int32), w_t = 1 or 2**t (bitwise)."""
    _check_coding(coding)
    lowest = 0 if coding == "binary" else -1
    if spikes.dim() == 0 or spikes.shape[0] < 1:
        raise UserError("spikes must have a leading time dimension of length ≥ 1; pass the output of expand()")
    if spikes.numel() and (spikes.min() < lowest or spikes.max() > 1):
        raise UserError(f"{coding} spikes must lie in [{lowest}, 1]; pass the output of expand() with the same coding")
    t = torch.arange(spikes.shape[0]).view(-1, *([1] * (spikes.dim() - 1)))
    w = 2**t if coding == "bitwise" else torch.ones_like(t)
    return (w * spikes.to(torch.int64)).sum(0).to(torch.int32)


def spike_stats(s: torch.Tensor, coding: str, steps: int | None = None) -> dict[str, float]:
    """Spike statistics of counts ``s`` [..., channels] expanded over T steps (no expansion is materialised).

    - ``steps``: T; ``spikes``: total spike count; ``n_tokens``, ``n_channels``.
    - ``spike_sparsity``: share of zero entries in the [T, tokens, channels] spike tensor; ``firing_rate`` =
      1 - spike_sparsity (spikes per neuron per step); ``spikes_per_channel``: mean spikes per token-channel.
    - ``zero_frac``: share of s = 0; ``silent_channels``: share of channels silent on every token;
      ``abs_le_7``: share of |s| ≤ 7 (fits 3 magnitude bits).
    """
    if s.dim() == 0 or s.numel() == 0:
        raise UserError("s must have at least one token and a channel dimension, e.g. shape [tokens, channels]")
    steps = _resolve_steps(s, coding, steps)
    counts = spike_counts(s, coding)
    n = s.numel()
    spikes = int(counts.sum())
    return {
        "steps": steps,
        "spikes": spikes,
        "n_tokens": n // s.shape[-1],
        "n_channels": s.shape[-1],
        "spike_sparsity": 1.0 - spikes / (steps * n),
        "firing_rate": spikes / (steps * n),
        "spikes_per_channel": spikes / n,
        "zero_frac": float((s == 0).double().mean()),
        "silent_channels": float((counts.reshape(-1, s.shape[-1]).sum(0) == 0).double().mean()),
        "abs_le_7": float((s.abs() <= 7).double().mean()),
    }

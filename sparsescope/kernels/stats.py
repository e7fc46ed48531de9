"""Fused exact per-token sparsity statistics: one C++ call per hooked site and batch, or the same in torch ops.

``logit_values`` does the same for the logits: per predicted token the next-token NLL and max-softmax probability
(the OOD baselines), in one pass over the vocabulary instead of materialising a log-softmax.

``site_values(x, owner, spec)`` takes a site's activations as a ``[B, T, G, n]`` view (``G`` rows per token: the
heads of an attention pattern, 1 elsewhere) and returns ``[B, T, M + D + 3]`` float64: per token the ``M`` static
metrics (mean over the ``G`` rows), the ``D`` delta (temporal) values against token ``t - 1``, then three flags:
``ok`` (counted, finite), ``bad`` (counted but NaN/inf somewhere; its metric columns are 0) and ``delta_ok``. Tokens
with ``owner < 0`` (padding) are all-zero rows. A caller sums the rows per prompt with one ``index_add_``. Optional
per-neuron accumulators (``fire`` count of ``|x_i| > fire_t · RMS(x)``, ``abs_sum``) are updated in place.

Both paths compute the same things in the same precision: |x| in float32 (float64 for float64 input), squares and
sums in float64, thresholds ``t · RMS`` rounded as torch rounds a Python float times a float32 tensor. The C++
kernel (CPU) never sorts: the energy metrics use a histogram with an exact sort of the boundary bin only. The torch
path (any device, stays on it) sorts. Counts agree exactly except when a partial energy sum lies within float64
rounding of its budget; float sums (Hoyer's L1, ``abs_sum``) agree to float64 rounding (summation order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import sparsescope.kernels.build as build

ZERO, NEAR, HOYER, MASS, TEAL = range(5)  # metric codes shared with csrc/stats.cpp
ENERGY = (MASS, TEAL)


@dataclass(frozen=True)
class StatsSpec:
    """What to compute per token: static metric codes with their parameter, delta thresholds, firing threshold."""

    kinds: tuple[int, ...] = ()  # ZERO | NEAR | HOYER | MASS | TEAL, one per static column
    params: tuple[float, ...] = ()  # NEAR: t (× RMS); MASS: p (kept energy ≥ p‖x‖²); TEAL: e² (dropped ≤ e²‖x‖²)
    delta_t: tuple[float, ...] = ()  # delta thresholds t: |x_t − x_{t−1}| ≤ t · RMS(x_t)
    fire_t: float = 0.1  # a neuron fires when |x_i| > fire_t · RMS(x)

    @property
    def width(self) -> int:
        return len(self.kinds) + len(self.delta_t) + 3


def kernel():
    """The compiled extension, or ``None`` (no compiler, build failure, ``SPARSESCOPE_NO_KERNELS=1``)."""
    return build.load("stats", ("stats.cpp",), build.CFLAGS + ("-ffp-contract=off",))


def _extension(use_kernel: bool | None, usable: bool):
    """The extension when a call should use it: ``usable`` says whether its inputs suit the kernel (CPU, dtype);
    ``use_kernel`` forces a path (``None``: the kernel where it is available, ``True`` raises where it is not)."""
    ext = kernel() if use_kernel is not False and usable else None
    if use_kernel and ext is None:
        raise RuntimeError("the stats kernel is not available here")
    return ext


def _last_dim_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` itself when its last dimension is contiguous (the kernels read rows by pointer), else a copy."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def site_values(x: torch.Tensor, owner: torch.Tensor, spec: StatsSpec, mask: torch.Tensor | None = None,
                fire: torch.Tensor | None = None, abs_sum: torch.Tensor | None = None,
                use_kernel: bool | None = None) -> torch.Tensor:
    """Per-token values ``[B, T, spec.width]`` of ``x`` ``[B, T, G, n]`` (see the module docstring).

    ``mask`` ``[B, T, n]`` marks the valid entries of ragged rows (shared by a token's ``G`` rows); delta and neuron
    counters need ``G == 1`` and no mask. ``use_kernel`` forces a path (``None``: the kernel when it is available
    and ``x`` is on the CPU).
    """
    if (spec.delta_t or fire is not None) and (x.shape[2] != 1 or mask is not None):
        raise ValueError("delta and neuron counters need one row per token and no mask")
    ext = _extension(use_kernel, x.device.type == "cpu")
    if ext is not None:
        x, mask = _last_dim_contiguous(x), _last_dim_contiguous(mask)
        return ext.site_values(x, mask, owner.contiguous(), list(spec.kinds), list(spec.params), list(spec.delta_t),
                               spec.fire_t, fire, abs_sum)
    return torch_values(x, owner, spec, mask, fire, abs_sum)


def torch_values(x: torch.Tensor, owner: torch.Tensor, spec: StatsSpec, mask: torch.Tensor | None = None,
                 fire: torch.Tensor | None = None, abs_sum: torch.Tensor | None = None) -> torch.Tensor:
    """The pure-torch path of :func:`site_values`: vectorised over all tokens, on ``x``'s device."""
    f64 = torch.float64
    dt = f64 if x.dtype == f64 else torch.float32
    b, t, g, n = x.shape
    xs = x.to(dt)
    a = xs.abs()
    if mask is not None:
        m = mask[:, :, None, :].expand(b, t, g, n)
        a = a.masked_fill(~m, 0.0)
        count = m.sum(-1).to(f64)
    else:
        count = torch.full((b, t, g), float(n), dtype=f64, device=x.device)
    l1 = a.sum(-1, dtype=f64)
    finite = torch.isfinite(l1)  # a NaN or inf entry makes |x|'s sum non-finite
    a = torch.where(finite[..., None], a, torch.zeros((), dtype=dt, device=x.device))
    total = a.to(f64).pow(2).sum(-1)
    rms = (total / count).sqrt().to(dt)
    cols: list[torch.Tensor] = []
    if any(k in ENERGY for k in spec.kinds):
        big = a if mask is None else a.masked_fill(~m, math.inf)  # invalid entries sort last, never fit a budget
        c = big.sort(-1).values.to(f64).pow(2).cumsum(-1)  # c[j] = energy of the j + 1 smallest entries
    for kind, p in zip(spec.kinds, spec.params):
        if kind == ZERO:
            cols.append(_count_le(a, mask, torch.zeros_like(rms)) / count)
        elif kind == NEAR:
            cols.append(_count_le(a, mask, p * rms) / count)
        elif kind == HOYER:
            sqrt_n, l2 = count.sqrt(), total.sqrt()
            ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-30), torch.ones_like(l2))
            cols.append((sqrt_n - ratio) / (sqrt_n - 1).clamp_min(1e-12))
        else:
            budget = p * total[..., None]
            fits = ((total[..., None] - c >= budget) if kind == MASS else (c <= budget)).sum(-1).to(f64)
            cols.append((count - fits) / count if kind == MASS else fits / count)
    counted = owner >= 0
    ok_tok = finite.all(-1) & counted
    vals = torch.stack(cols, -1).sum(2) / g if cols else x.new_zeros(b, t, 0, dtype=f64)
    deltas = x.new_zeros(b, t, len(spec.delta_t), dtype=f64)
    delta_ok = torch.zeros(b, t, dtype=torch.bool, device=x.device)
    if spec.delta_t:
        diff = (xs[:, 1:, 0] - xs[:, :-1, 0]).abs()
        r = rms[:, 1:, 0, None]
        deltas[:, 1:] = torch.stack([(diff <= d * r).sum(-1).to(f64) / n for d in spec.delta_t], -1)
        delta_ok[:, 1:] = ok_tok[:, 1:] & ok_tok[:, :-1]
    if fire is not None:
        w = ok_tok[..., None, None]
        fire += ((a > spec.fire_t * rms[..., None]) & w).sum((0, 1, 2), dtype=f64)
        abs_sum += torch.where(w, a, torch.zeros((), dtype=dt, device=x.device)).sum((0, 1, 2), dtype=f64)
    zero = torch.zeros((), dtype=f64, device=x.device)
    return torch.cat([torch.where(ok_tok[..., None], vals, zero), torch.where(delta_ok[..., None], deltas, zero),
                      ok_tok[..., None].to(f64), (counted & ~ok_tok)[..., None].to(f64),
                      delta_ok[..., None].to(f64)], -1)


def _count_le(a: torch.Tensor, mask: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """Valid entries with ``|x| ≤ v`` per row, as float64."""
    le = a <= v[..., None]
    if mask is not None:
        le &= mask[:, :, None, :]
    return le.sum(-1).to(torch.float64)


def logit_values(logits: torch.Tensor, targets: torch.Tensor, want: torch.Tensor,
                 use_kernel: bool | None = None) -> torch.Tensor:
    """``[B, T, 3]`` float64: next-token NLL, max-softmax probability and an ok flag of ``logits`` ``[B, T, V]``
    for the rows where ``want`` ``[B, T]`` is true and every logit is finite (all 0 elsewhere; row t predicts
    ``targets[:, t]``). The kernel (float32 CPU logits) agrees with the torch twin to float32 rounding."""
    ext = _extension(use_kernel, logits.device.type == "cpu" and logits.dtype == torch.float32)
    if ext is not None:
        return ext.logit_values(_last_dim_contiguous(logits), targets.contiguous(), want.contiguous())
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)  # bf16 → float32
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    maxp = logp.max(-1).values.exp()
    ok = want & torch.isfinite(logits).all(-1)
    out = torch.stack([nll, maxp, torch.ones_like(nll)], -1).double()
    return torch.where(ok[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))

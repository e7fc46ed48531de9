"""Input-sparse GEMV kernels for decode: y = W x reading only the weight columns of the non-zero inputs.

A weight is *packed* once into a column-contiguous layout ``wt = W.T`` ([in, out], row j holds the weights of
input j), as fp32, bf16 or int8 with one fp32 scale per output channel. Then ``linear(packed, x, threshold=t)``
reads only the rows of inputs with |x| ≥ t (TEAL's rule; the union over the rows of a small batch), so the bytes
read — which bound batch-1 decode on a CPU — fall with the input sparsity s towards 1/(1−s). ``threshold=None``
is our own dense GEMV over the same layout, and ``spike_linear`` takes integer spike counts (bitwise/ternary
coding) with one ``v_th`` per token.

Backends: the bundled C++ kernel (``csrc/sparse_gemv.cpp``, OpenMP, one fp32 accumulator per thread) on the CPU,
else a pure-torch path with the same arithmetic (also on CUDA). Both accumulate in fp32; they differ only in the
order of the sums, so results agree to fp32 rounding: |Δy| ≤ 1e-5 · Σ_j |x_j| · max|W[:, j]| (tests use that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsescope.errors import UserError
from sparsescope.kernels.build import load
from sparsescope.levers.teal import threshold_input

FORMATS = ("fp32", "bf16", "int8")
BACKENDS = ("auto", "kernel", "torch")
INT8_MAX = 127  # symmetric absmax, as ``levers.quant`` (the code −128 is unused)


def native():
    """The compiled extension, or None (no compiler, ``SPARSESCOPE_NO_KERNELS=1``) after one notice."""
    return load("sparse", ("sparse_gemv.cpp",))


@dataclass
class Packed:
    """A linear's weight in the column-contiguous layout: ``wt`` [in, out], ``scale`` [out] for int8, ``bias``."""

    wt: torch.Tensor
    scale: torch.Tensor | None
    bias: torch.Tensor | None
    fmt: str

    @property
    def in_features(self) -> int:
        return self.wt.shape[0]

    @property
    def out_features(self) -> int:
        return self.wt.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes a dense pass reads (weights and scales)."""
        extra = self.scale.numel() * 4 if self.scale is not None else 0
        return self.wt.numel() * self.wt.element_size() + extra

    def dequantized(self) -> torch.Tensor:
        """The fp32 [in, out] weight this packing stands for (int8 codes times their scales)."""
        w = self.wt.float()
        return w * self.scale if self.scale is not None else w


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric absmax int8: (codes [out, in] int8, scales [out] fp32).

    ``codes * scales[:, None]`` equals ``levers.quant.quantize_weight(W, 8)`` exactly, so the int8 kernel's quality
    is what the ``quant`` lever measures.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (w / safe[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None, fmt: str = "fp32") -> Packed:
    """Pack ``weight`` [out, in] (and ``bias`` [out]) as ``fmt`` (fp32, bf16 or int8) on the weight's device."""
    if fmt not in FORMATS:
        raise UserError(f"unknown weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if weight.dim() != 2:
        raise UserError(f"pack needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    b = None if bias is None else bias.detach().float().contiguous()
    if fmt == "int8":
        codes, scale = quantize_int8(weight)
        return Packed(codes.t().contiguous(), scale.contiguous(), b, fmt)
    dtype = torch.float32 if fmt == "fp32" else torch.bfloat16
    return Packed(weight.detach().to(dtype).t().contiguous(), None, b, fmt)


def _backend(packed: Packed, x: torch.Tensor, backend: str):
    """The native module to use, or None for the torch path; refuses devices and backends that do not fit."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if x.device != packed.wt.device:
        raise UserError(f"the input is on {x.device} but the packed weight on {packed.wt.device}; "
                        f"pack the weight on the input's device (pack(W.to('{x.device}')))")
    if x.shape[-1] != packed.in_features:
        raise UserError(f"input has {x.shape[-1]} features but the weight expects {packed.in_features}")
    if backend == "torch":
        return None
    if packed.wt.device.type != "cpu":
        if backend == "kernel":
            raise UserError(f"the bundled C++ kernel is built for the CPU, not {packed.wt.device}; "
                            "use backend='auto' or 'torch' (the torch path runs there)")
        return None
    return native()


def _torch_gemv(packed: Packed, x: torch.Tensor, sparse: bool, rowscale: torch.Tensor | None) -> torch.Tensor:
    """The pure-torch twin of the kernel: fp32 accumulation over the active rows only."""
    if sparse:
        idx = (x != 0).any(0).nonzero().squeeze(1)
        y = x[:, idx] @ packed.wt[idx].float()
    else:
        y = x @ packed.wt.float()
    if packed.scale is not None:
        y = y * packed.scale
    if rowscale is not None:
        y = y * rowscale[:, None]
    return y + packed.bias if packed.bias is not None else y


def _run(packed: Packed, x: torch.Tensor, threshold: float | None, rowscale: torch.Tensor | None,
         backend: str) -> torch.Tensor:
    mod = _backend(packed, x, backend)
    flat = x.reshape(-1, packed.in_features)
    if mod is not None:
        return mod.gemv(packed.wt, flat, threshold is not None, 0.0 if threshold is None else float(threshold),
                        packed.scale, rowscale, packed.bias)
    xf = flat.float()
    if threshold is not None:
        xf = threshold_input(xf, threshold)
    return _torch_gemv(packed, xf, threshold is not None, rowscale)


def linear(packed: Packed, x: torch.Tensor, threshold: float | None = None, backend: str = "auto") -> torch.Tensor:
    """``x @ W.T + b`` for x [..., in] (any strides, fp32/bf16): sparse over inputs with |x| ≥ ``threshold``.

    ``threshold=None`` reads every column (our dense GEMV); ``threshold=0.0`` skips exact zeros only. The result
    has x's dtype; accumulation is fp32 either way.
    """
    y = _run(packed, x, threshold, None, backend)
    return y.to(x.dtype).view(*x.shape[:-1], packed.out_features)


def spike_linear(packed: Packed, counts: torch.Tensor, v_th: torch.Tensor | float,
                 backend: str = "auto") -> torch.Tensor:
    """``(counts · v_th) @ W.T + b`` from integer spike counts [..., in] and one v_th per token (or a scalar).

    Only inputs that spiked are read; their integer counts weight their rows, the token's v_th scales once.
    """
    if counts.is_floating_point() or counts.is_complex():
        raise UserError(f"spike counts must be an integer tensor, got {counts.dtype}; pass spiking.coding.encode's s")
    mod = _backend(packed, counts, backend)
    flat = counts.reshape(-1, packed.in_features)
    v = torch.as_tensor(v_th, dtype=torch.float32, device=counts.device).reshape(-1)
    rowscale = (v.expand(flat.shape[0]) if v.numel() == 1 else v).contiguous()
    if rowscale.numel() != flat.shape[0]:
        raise UserError(f"v_th has {rowscale.numel()} values for {flat.shape[0]} tokens; pass one per token")
    if mod is not None:
        y = mod.gemv(packed.wt, flat.to(torch.int32), True, 0.0, packed.scale, rowscale, packed.bias)
    else:
        y = _torch_gemv(packed, flat.float(), True, rowscale)
    return y.view(*counts.shape[:-1], packed.out_features)

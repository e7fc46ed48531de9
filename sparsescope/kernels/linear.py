"""``SparseLinear``: the lever that runs a linear through the bundled sparse kernels (``Rule("sparse", ...)``).

It harvests what the other levers only simulate. Its input is thresholded TEAL-style (one |x| threshold per
linear, the ``sparsity`` quantile of the calibration sample, by TEAL's own rule) or spike-coded (``spike_k``:
per-token integer counts, ``spiking.coding.encode``), and its weight is packed once — at the first call, after any
weight lever on the same linear has run — as fp32 or per-channel int8 in the column-contiguous layout. Decode
steps (≤ ``KERNEL_ROWS`` tokens) run the sparse GEMV, which reads only the active weight columns; longer inputs
(prefill, perplexity) run one torch matmul on the same packed weight and the same thresholded input, so quality
measured on long chunks is the quality decode gets. ``sparsity = 0`` is our dense GEMV (the dense baseline of the
decode benchmark). The original module and weight are never touched, so ``restore`` is bit-exact.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsescope.errors import UserError
from sparsescope.intervene import LinearContext, Lever, register_lever
from sparsescope.kernels import sparse as sp
from sparsescope.models.sites import linear_weight
from sparsescope.levers._checks import calibration_stat, check_sparsity
from sparsescope.levers.teal import teal_threshold
from sparsescope.spiking import coding

KERNEL_ROWS = 16  # tokens per call up to which the GEMV kernel runs; above it a matmul reads the weight once anyway
LEVER_FORMATS = ("fp32", "int8")


class SparseLinear(Lever):
    """Computes its linear with ``kernels.sparse`` on a packed copy of the weight (see the module docstring)."""

    def __init__(self, name: str, threshold: float | None, weights: str, spike_k: float | None):
        self.name, self.threshold, self.weights, self.spike_k = name, threshold, weights, spike_k
        self.packed: sp.Packed | None = None

    def linear(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        if self.packed is None:
            self.packed = sp.pack(linear_weight(module), getattr(module, "bias", None), self.weights)
        if self.spike_k is not None:
            s, v_th = coding.encode(x.reshape(-1, x.shape[-1]), self.spike_k)
            return sp.spike_linear(self.packed, s, v_th).to(x.dtype).view(*x.shape[:-1], -1)
        if x.numel() // x.shape[-1] <= KERNEL_ROWS:
            return sp.linear(self.packed, x, self.threshold)
        return sp.linear(self.packed, x, self.threshold, backend="torch")


@register_lever("sparse")
def sparse(ctx: LinearContext, sparsity: float = 0.5, weights: str = "fp32", spike_k: float | None = None
           ) -> SparseLinear:
    """``Rule("sparse", {"sparsity": 0.5, "weights": "int8"})``: TEAL-thresholded input, fp32 or int8 weights;
    ``{"spike_k": 3}`` instead: spike-coded input (``v_th = mean|x|/k`` per token). ``sparsity`` 0: dense kernel."""
    if weights not in LEVER_FORMATS:
        raise UserError(f"sparse {ctx.name}: weights={weights!r}; choose one of {', '.join(LEVER_FORMATS)}")
    if spike_k is not None:
        if not (isinstance(spike_k, (int, float)) and spike_k > 0):
            raise UserError(f"sparse {ctx.name}: spike_k={spike_k!r} must be a number > 0 (v_th = mean|x|/k)")
        return SparseLinear(ctx.name, None, weights, float(spike_k))
    check_sparsity(sparsity, f"sparse {ctx.name}")
    if sparsity == 0:
        return SparseLinear(ctx.name, None, weights, None)
    return SparseLinear(ctx.name, teal_threshold(calibration_stat(ctx, "abs_sample", "sparse"), sparsity), weights,
                        None)

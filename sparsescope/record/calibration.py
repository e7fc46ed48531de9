"""Per-linear input statistics from a calibration text: what Wanda, TEAL thresholds and IF/LIF thresholds need.

For every eligible linear (by weight site) it streams the input's per-channel L2 norm and keeps a bounded random
sample of |x| (for quantile thresholds), so memory does not grow with the calibration length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import site_name
from sparsescope.models.tokens import token_chunks

SAMPLE = 1 << 16  # |x| values kept per linear for quantiles


def quantile_threshold(samples: torch.Tensor, q: float) -> float:
    """The project's one quantile rule: the k-th smallest sample, k = round(q · n) (0-based, at most n − 1).

    Without ties exactly k samples lie below it, so a threshold at share q zeroes exactly that share of the
    calibration entries (TEAL's sparsity, the ann2snn percentile of IF/LIF neurons).
    """
    flat = samples.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise UserError("no calibration samples; calibrate on a non-empty text first")
    k = min(round(q * flat.numel()), flat.numel() - 1)
    return flat.kthvalue(k + 1).values.item()


def calibrate(lm: LoadedModel, texts: str | Sequence[str], seq_len: int = 256, max_tokens: int = 2048,
              layers: Sequence[int] | None = None, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``{"blocks.3.mlp.W_out": {"act_norm": [in], "abs_sample": [≤65536], "n_tokens": scalar}}`` per linear.

    ``act_norm`` is ‖x_j‖₂ over all calibration tokens (Wanda's input norm); ``abs_sample`` a uniform sample
    without replacement of all |x| entries seen (bottom-k sampling: every entry draws a uniform key and the SAMPLE
    smallest keys stay, so every entry of every chunk is equally likely to be kept), for thresholds at a quantile
    (TEAL) or percentile (ann2snn).
    """
    chunks = token_chunks(lm, texts, seq_len, max_tokens)
    if chunks.numel() < 2:
        raise UserError("the calibration text is empty (under 2 tokens); pass a longer calibration text")
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    handles = []

    def observer(name: str):
        def hook(module, args, kwargs):
            x = (args[0] if args else kwargs["input"]).detach().float()
            x = x.reshape(-1, x.shape[-1])
            st = stats.setdefault(name, {"sq": torch.zeros(x.shape[1], dtype=torch.float64),
                                         "abs_sample": torch.empty(0), "keys": torch.empty(0),
                                         "n_tokens": torch.tensor(0)})
            st["sq"] += x.pow(2).sum(0, dtype=torch.float64).cpu()  # statistics on CPU wherever the layer runs
            st["n_tokens"] += x.shape[0]
            keys = torch.cat([st["keys"], torch.rand(x.numel(), generator=gen)])
            keep = keys.topk(min(SAMPLE, len(keys)), largest=False).indices
            old = keep < len(st["abs_sample"])  # kept from the sample so far, else new entries of x (moved, not x)
            values = torch.empty(len(keep))
            values[old] = st["abs_sample"][keep[old]]
            values[~old] = x.abs().flatten()[(keep[~old] - len(st["abs_sample"])).to(x.device)].cpu()
            st["abs_sample"], st["keys"] = values, keys[keep]
        return hook

    try:
        for layer, wsite in lm.sites.linear_names():
            if layers is not None and layer not in layers:
                continue
            module = lm.sites.linear(layer, wsite)
            handles.append(module.register_forward_pre_hook(observer(site_name(layer, wsite)), with_kwargs=True))
        for chunk in chunks:
            lm.forward(chunk[None], torch.ones_like(chunk)[None])
    finally:
        for h in handles:
            h.remove()
    return {name: {"act_norm": st["sq"].sqrt().float(), "abs_sample": st["abs_sample"], "n_tokens": st["n_tokens"]}
            for name, st in stats.items()}

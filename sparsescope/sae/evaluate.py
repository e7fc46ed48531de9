"""SAE quality in our own forward pass, named as sae-lens / SAEBench name it.

Per window of tokens (position 0 left out, as in training) we sum what every metric needs, so a split's value is
a ratio of sums and its bootstrap interval resamples prompts (`stats.bootstrap_sums`):

- ``l0``: mean active features per token; ``mse``: mean over tokens of ‖x − x̂‖²; ``cosine``: mean cos(x, x̂);
- ``explained_variance`` = 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²) (sae-lens's ``ExplainedVarianceCalculator``);
- ``ce_loss_recovered`` = (CE_zero − CE_sae) / (CE_zero − CE_clean) (sae-lens's ``ce_loss_score``), with the SAE's
  reconstruction spliced into the model at the site through `SiteMap.attach`, zero-ablation through the same path;
- ``kl_score`` = (KL_zero − KL_sae) / KL_zero, KL(clean ‖ patched) of the next-token distributions;
- ``dead_frac`` / ``dense_frac``: features that never fire / fire on more than ``DENSE`` of the split's tokens.
CE and KL use the predictions made at positions 1 … T−2 (the positions the splice changes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.record.metrics import FIRE_T
from sparsescope.sae.activations import check_sites, token_windows
from sparsescope.stats import bootstrap_sums, percentile_interval

DENSE = 0.1  # a feature firing on more than this share of tokens counts as dense (SAEBench's threshold)
METRICS = ("l0", "explained_variance", "mse", "cosine", "ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered",
           "kl_score")
WINDOW = 32  # tokens per ID / OOD window (position 0 excluded): every prompt is compared at the same length


def site_width(lm: LoadedModel, site: str) -> int:
    """Width of a site's activation vector, from a two-token forward pass."""
    from sparsescope.sae.activations import capture

    key = check_sites(lm, [site])[0]
    width = []
    capture(lm, [key], torch.tensor([[0, 0]]), 1, lambda i, acts: width.append(acts[key].shape[-1]))
    return width[0]


def check_width(sae, lm: LoadedModel, site: str) -> None:
    """Refuse an SAE whose input width differs from the site's."""
    d = site_width(lm, site)
    if sae.cfg.d_in != d:
        raise UserError(f"the SAE reads {sae.cfg.d_in}-wide vectors but {site} of {lm.name} is {d} wide; "
                        "pass the site (and model) the SAE was trained on")


@torch.no_grad()
def measure(lm: LoadedModel, sae, site: str, windows: torch.Tensor, batch_size: int = 8,
            progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Per-window sums for every metric (``[n_windows, ...]`` arrays). ``sae`` needs ``encode`` and ``decode``;
    CE/KL entries are present when the model has logits."""
    key = check_sites(lm, [site])[0]
    seen: dict[str, torch.Tensor] = {}
    shape = [0, 0]

    def observe(t):
        seen["x"] = t.reshape(*shape, -1)

    def splice_with(value: torch.Tensor):
        def replace(t):
            y = t.reshape(*shape, -1).clone()
            y[:, 1:] = value.to(y.dtype)
            return y.reshape(t.shape)
        return replace

    parts: dict[str, list] = {}
    for start in range(0, len(windows), batch_size):
        ids = windows[start: start + batch_size]
        shape[:] = ids.shape
        mask = torch.ones_like(ids)
        handle = lm.sites.attach(*key, observe)
        try:
            logits = lm.forward(ids, mask)
        finally:
            handle.remove()
        x = seen.pop("x")[:, 1:].float()
        feats = sae.encode(x)
        x_hat = sae.decode(feats)
        sums = _recon_sums(x, x_hat, feats)
        if logits is not None:
            patched = {}
            for name, value in (("sae", x_hat), ("zero", torch.zeros_like(x))):
                handle = lm.sites.attach(*key, splice_with(value))
                try:
                    patched[name] = lm.forward(ids, mask)
                finally:
                    handle.remove()
            sums |= _loss_sums(ids, logits, patched)
        for name, v in sums.items():
            parts.setdefault(name, []).append(v.double().numpy())
        if progress:
            progress(int(ids.numel()))
    return {name: np.concatenate(v) for name, v in parts.items()}


def _recon_sums(x: torch.Tensor, x_hat: torch.Tensor, feats: torch.Tensor) -> dict[str, torch.Tensor]:
    err = (x - x_hat).pow(2).sum(-1)
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12)
    fire = feats > 0
    a = x.abs()
    neuron_fire = a > FIRE_T * a.pow(2).mean(-1, keepdim=True).sqrt()  # the recorder's firing criterion
    return dict(n=torch.full((len(x),), x.shape[1]), sum_x=x.double().sum(1), sq_x=x.double().pow(2).sum((1, 2)),
                rss=err.double().sum(1), cos=cos.double().sum(1), l0=fire.sum((1, 2)), fires=fire.sum(1).float(),
                act_sum=feats.clamp(min=0).sum(1), neuron_fires=neuron_fire.sum(1).float())


def _loss_sums(ids: torch.Tensor, clean: torch.Tensor, patched: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed next-token NLL (clean, sae, zero) and KL(clean ‖ patched) over predictions at positions 1 … T−2."""
    target = ids[:, 2:]
    logp = torch.log_softmax(clean[:, 1:-1].float(), -1)
    out = dict(n_pred=torch.full((len(ids),), target.shape[1]),
               nll_clean=-logp.gather(-1, target[..., None])[..., 0].double().sum(1))
    for name, logits in patched.items():
        lq = torch.log_softmax(logits[:, 1:-1].float(), -1)
        out[f"nll_{name}"] = -lq.gather(-1, target[..., None])[..., 0].double().sum(1)
        out[f"kl_{name}"] = (logp.exp() * (logp - lq)).sum(-1).double().sum(1)
    return out


def _statistics(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split-level metrics from summed window statistics (leading axis: resamples)."""
    n = s["n"]
    var = s["sq_x"] / n - ((s["sum_x"] / n[:, None]) ** 2).sum(-1)
    out = dict(l0=s["l0"] / n, mse=s["rss"] / n, cosine=s["cos"] / n, explained_variance=1 - s["rss"] / n / var)
    if "n_pred" in s:
        ce = {k: s[f"nll_{k}"] / s["n_pred"] for k in ("clean", "sae", "zero")}
        out |= dict(ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
                    ce_loss_recovered=(ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
                    kl_score=(s["kl_zero"] - s["kl_sae"]) / s["kl_zero"])
    return out


_SUMMED = ("n", "sum_x", "sq_x", "rss", "cos", "l0", "n_pred", "nll_clean", "nll_sae", "nll_zero", "kl_sae", "kl_zero")


def group_units(sums: dict[str, np.ndarray], units: np.ndarray) -> dict[str, np.ndarray]:
    """Add window sums up per unit (e.g. prompt id) so the bootstrap resamples units."""
    codes, index = np.unique(units, return_inverse=True)
    out = {}
    for name, v in sums.items():
        acc = np.zeros((len(codes), *v.shape[1:]))
        np.add.at(acc, index, v)
        out[name] = acc
    return out


def split_metrics(sums: dict[str, np.ndarray], units: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  ci: float = 0.95) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One split's metrics with ``*_lo``/``*_hi`` bounds (units resampled), plus the replicates for differences."""
    grouped = group_units({k: v for k, v in sums.items() if k in _SUMMED}, units)
    point, boots = bootstrap_sums(grouped, _statistics, n_boot=n_boot, seed=seed)
    row: dict[str, float] = {}
    for name in METRICS:
        if name in point:
            row[name] = point[name]
            row[f"{name}_lo"], row[f"{name}_hi"] = percentile_interval(boots[name], ci)
        else:
            row[name] = row[f"{name}_lo"] = row[f"{name}_hi"] = float("nan")
    fires = sums["fires"].sum(0)
    density = fires / sums["n"].sum()
    row |= dict(n_tokens=int(sums["n"].sum()), n_units=len(np.unique(units)),
                dead_frac=float((fires == 0).mean()), dense_frac=float((density > DENSE).mean()))
    return row, boots


def feature_frame(sums: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-feature firing frequency (``density``) and mean activation over a split's tokens."""
    n = sums["n"].sum()
    return pd.DataFrame(dict(feature=np.arange(sums["fires"].shape[1]), density=sums["fires"].sum(0) / n,
                             mean_act=sums["act_sum"].sum(0) / n))


@dataclass
class Windows:
    """Token windows with their labels: the unit each belongs to (prompt id), its split and family."""

    ids: torch.Tensor
    unit: np.ndarray
    split: np.ndarray
    family: np.ndarray


def suite_windows(lm: LoadedModel, suites: Sequence, size: int = WINDOW) -> Windows:
    """Every suite prompt cut into windows of ``size`` tokens (tokenized without special tokens); prompts shorter
    than one window contribute nothing. Units are ``<suite>/<prompt id>``."""
    ids, unit, split, family = [], [], [], []
    for suite in suites:
        for p in suite.prompts:
            for w in token_windows(lm.tokenizer(p.text, add_special_tokens=False)["input_ids"], size):
                ids.append(w)
                unit.append(f"{suite.name}/{p.id}")
                split.append(suite.split)
                family.append(suite.family or suite.name)
    if not ids:
        raise UserError(f"no prompt of the suites has {size} tokens; use longer prompts or a smaller window")
    return Windows(torch.tensor(ids), np.array(unit), np.array(split), np.array(family))

"""Spike statistics gathered while a converted model runs, and the tidy ``spikes`` and ``energy`` tables.

Each token is its own spike train: it needs T_tok steps (the steps its largest |s| needs, or the IF/LIF window),
so sparsity is counted over the slots that exist, Σ_tok T_tok · channels, not over a padded [max T] window.

- ``spike_sparsity`` = 1 − spikes / slots (share of empty slots in the spike trains); ``firing_rate`` = the rest.
- ``zero_frac``: share of s = 0 (channels that stay silent for a token: the integer-count sparsity).
- ``spikes_per_channel``: mean spikes per token and channel; ``silent_channels``: share of channels silent on
  every token; ``abs_le_7``: share of |s| ≤ 7; ``steps``: mean T_tok (``steps_max``: the largest).
- ``sops`` = Σ spikes × fan-out (out_features); ``macs`` = tokens · in · out (the dense layer).
- ``recon_mse``: mean (x − x̂)² over entries; ``recon_cos``: mean over tokens of cos(x, x̂).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F

from sparsescope.errors import UserError
from sparsescope.cost import PRESETS, LinearCost, cost_table

SPIKE_METRICS = ("spike_sparsity", "firing_rate", "zero_frac", "spikes_per_channel", "silent_channels", "abs_le_7",
           "steps", "steps_max", "sops", "macs", "recon_mse", "recon_cos")
BITS = {"fp32": 32, "fp16": 16, "int8": 8}  # weight and activation bits that go with each energy preset


@dataclass
class SpikeStats:
    """Running sums for one linear (memory grows with its width, never with tokens)."""

    in_features: int
    out_features: int
    coding: str
    tokens: int = 0
    spikes: int = 0
    slots: int = 0
    steps_sum: int = 0
    steps_max: int = 0
    zeros: int = 0
    le7: int = 0
    sq_err: float = 0.0
    cos_sum: float = 0.0
    channel_spikes: torch.Tensor | None = None
    by_steps: dict[int, list[int]] = field(default_factory=dict)  # T → [tokens, spikes, non-zero s]

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, s: torch.Tensor, counts: torch.Tensor,
               steps: torch.Tensor) -> None:
        """Add tokens: dense input ``x`` [N, in], its decoding ``x_hat``, counts ``s``, spikes per entry
        ``counts`` (int) and steps per token ``steps`` [N]."""
        n = x.shape[0]
        self.tokens += n
        self.spikes += int(counts.sum())
        self.slots += int(steps.sum()) * self.in_features
        self.steps_sum += int(steps.sum())
        self.steps_max = max(self.steps_max, int(steps.max()) if n else 0)
        self.zeros += int((s == 0).sum())
        self.le7 += int((s.abs() <= 7).sum())
        self.sq_err += float((x - x_hat).pow(2).sum(dtype=torch.float64))
        self.cos_sum += float(F.cosine_similarity(x, x_hat, dim=-1).sum(dtype=torch.float64))
        per_channel = counts.sum(0, dtype=torch.int64)
        self.channel_spikes = per_channel if self.channel_spikes is None else self.channel_spikes + per_channel
        per_token = torch.stack([counts.sum(-1, dtype=torch.int64), (s != 0).sum(-1, dtype=torch.int64)], -1)
        for t in steps.unique().tolist():
            spikes_t, nonzero_t = per_token[steps == t].sum(0).tolist()
            acc = self.by_steps.setdefault(int(t), [0, 0, 0])
            acc[0] += int((steps == t).sum())
            acc[1] += spikes_t
            acc[2] += nonzero_t

    def reset(self) -> None:
        """Forget everything gathered so far."""
        fresh = SpikeStats(self.in_features, self.out_features, self.coding)
        self.__dict__.update(fresh.__dict__)

    def metrics(self) -> dict[str, float]:
        return aggregate([self])

    def costs(self, name: str, bits: int = 32) -> list[LinearCost]:
        """The layer's workload for the energy model, one :class:`LinearCost` per step count T (exact: the cost
        model is per token given T)."""
        return [LinearCost(f"{name}@T={t}", self.in_features, self.out_features, tokens=n, weight_bits=bits,
                           act_bits=bits, input_density=nonzero / (n * self.in_features),
                           firing_rate=spikes / (t * n * self.in_features), steps=t, coding=self.coding)
                for t, (n, spikes, nonzero) in sorted(self.by_steps.items())]


def aggregate(stats: Sequence[SpikeStats]) -> dict[str, float]:
    """The module-docstring metrics over several linears at once, each sum pooled (slot-, entry- or
    token-weighted); NaN when nothing was seen."""
    seen = [st for st in stats if st.tokens]
    if not seen:
        return {m: math.nan for m in SPIKE_METRICS}
    total = {key: sum(getattr(st, key) for st in seen)
             for key in ("tokens", "spikes", "slots", "steps_sum", "zeros", "le7", "sq_err", "cos_sum")}
    entries = sum(st.tokens * st.in_features for st in seen)
    return {
        "spike_sparsity": 1 - total["spikes"] / total["slots"],
        "firing_rate": total["spikes"] / total["slots"],
        "zero_frac": total["zeros"] / entries,
        "spikes_per_channel": total["spikes"] / entries,
        "silent_channels": sum(int((st.channel_spikes == 0).sum()) for st in seen) / sum(st.in_features for st in seen),
        "abs_le_7": total["le7"] / entries,
        "steps": total["steps_sum"] / total["tokens"],
        "steps_max": float(max(st.steps_max for st in seen)),
        "sops": float(sum(st.spikes * st.out_features for st in seen)),
        "macs": float(sum(st.tokens * st.in_features * st.out_features for st in seen)),
        "recon_mse": total["sq_err"] / entries,
        "recon_cos": total["cos_sum"] / total["tokens"],
    }


def spike_table(levers: Iterable, run_id: str = "", model: str = "") -> pd.DataFrame:
    """Tidy ``spikes`` table: ``run_id, model, layer, site, metric, threshold, value, n_tokens`` per spike lever.

    ``site`` is the weight site (``mlp.W_out``; its input site is ``models.sites.LINEAR_INPUT_SITE[site]``);
    ``threshold`` is k for adaptive neurons and the calibrated v_th for IF/LIF.
    """
    rows = []
    for lv in levers:
        threshold = lv.config.k if lv.v_th is None else lv.v_th
        for metric, value in lv.stats.metrics().items():
            rows.append({"run_id": run_id, "model": model, "layer": lv.layer, "site": lv.site, "metric": metric,
                         "threshold": float(threshold), "value": float(value), "n_tokens": lv.stats.tokens})
    return pd.DataFrame(rows, columns=["run_id", "model", "layer", "site", "metric", "threshold", "value", "n_tokens"])


def energy_table(levers: Sequence, constants: str = "fp32") -> pd.DataFrame:
    """The energy model (``energy.cost_table``) fed with the measured statistics: one row per linear and method
    (dense, sparse, spiking, quantized), plus ``total`` rows (layer -1).

    Columns: name, layer, site, method, constants, macs, sops, weight_bytes, act_bytes, bytes,
    energy_compute_uJ (no memory traffic), energy_memory_uJ, energy_total_uJ (with memory traffic).
    """
    if constants not in BITS:
        raise UserError(f"unknown energy preset {constants!r}; use one of {', '.join(BITS)}")
    costs = [c for lv in levers for c in lv.stats.costs(lv.name, BITS[constants])]
    if not costs:
        raise UserError("no spike statistics yet; run the converted model on some text first")
    table = cost_table(costs, PRESETS[constants])
    table = table[table["name"] != "total"].copy()
    table["name"] = table["name"].str.rpartition("@T=")[0]
    place = {lv.name: (lv.layer, lv.site) for lv in levers}
    per_linear = table.groupby(["name", "method", "constants"], sort=False).sum(numeric_only=True).reset_index()
    totals = per_linear.groupby(["method", "constants"], sort=False).sum(numeric_only=True).reset_index()
    totals["name"] = "total"
    out = pd.concat([per_linear, totals], ignore_index=True)
    out.insert(1, "layer", [place.get(n, (-1, "all"))[0] for n in out["name"]])
    out.insert(2, "site", [place.get(n, (-1, "all"))[1] for n in out["name"]])
    return out[["name", "layer", "site", "method", *[c for c in table.columns if c not in ("name", "method")]]]

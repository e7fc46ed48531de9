"""SpikingLinear as a lever: a linear's input becomes spikes and is decoded back before the matmul (design §6, §10).

The ``"spike"`` lever replaces x by what its spikes stand for, x̂ = s·scale, so the wrapped linear computes
W·x̂ — exactly what a spiking layer summing ±weights per spike computes — and counts the spikes on the way:

- ``neuron="adaptive"`` (default): integer spikes s = round(x / (mean|x|/k)) per token (``coding.encode``), spread
  over the steps the token needs in the chosen ``coding``; ``max_steps`` caps the steps (clipping |s|), ``wta``
  keeps the ``wta`` strongest channels per step and token. Expanding and collapsing is exact, so the spike
  tensor is only materialised for ``wta``.
- ``neuron="if" | "lif"``: rate coding over ``T`` steps with one threshold per linear, the ``percentile`` of the
  calibration |x| sample. IF neurons are one-sided, so each channel is a pair of neurons for +|x| and −|x|: the
  spikes are ternary (±1) and x̂ = v_th·(signed spike count)/T.

``convert(lm, ...)`` and ``restore(lm)`` are thin wrappers around ``intervene.apply`` / ``intervene.restore``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from sparsescope import intervene
from sparsescope.errors import UserError
from sparsescope.intervene import Applied, InterventionError, Lever, LinearContext, Plan, Rule, register_lever
from sparsescope.models.loading import LoadedModel
from sparsescope.spiking import coding as spike_coding
from sparsescope.spiking.neurons import RATE_NEURONS, RESETS, calibrate_threshold, rate_encode
from sparsescope.spiking.stats import SpikeStats

NEURONS = ("adaptive", *RATE_NEURONS)
DEFAULT_T = 8  # rate-coding window of IF/LIF neurons


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: object, name: str, hint: str) -> None:
    if not (_is_number(v) and int(v) == v and v >= 1):
        raise UserError(f"{name} must be a whole number ≥ 1, got {v!r}; {hint}")


@dataclass(frozen=True)
class SpikeConfig:
    """Parameters of the ``"spike"`` lever, validated on construction (bad values raise UserError)."""

    k: float = 3.0
    coding: str | None = None  # adaptive: "bitwise" by default; if/lif: always "ternary" (signed rate spikes)
    neuron: str = "adaptive"
    T: int | None = None  # if/lif only: steps of the rate window (default 8)
    tau: float = 2.0  # lif only
    reset: str = "soft"  # if/lif
    percentile: float = 99.9  # if/lif: threshold = this percentile of the calibration |x|
    wta: int | None = None  # adaptive only: spikes kept per token per step
    max_steps: int | None = None  # adaptive only: cap on the steps (|s| is clipped to what they can express)

    def __post_init__(self) -> None:
        if self.neuron not in NEURONS:
            raise UserError(f"unknown neuron {self.neuron!r}; use one of {', '.join(NEURONS)}")
        if not (_is_number(self.k) and self.k > 0):
            raise UserError(f"k must be > 0 (v_th = mean|x|/k), got {self.k!r}; try k = 3")
        adaptive = self.neuron == "adaptive"
        coding = self.coding or ("bitwise" if adaptive else "ternary")
        if coding not in spike_coding.CODINGS:
            raise UserError(f"unknown spike coding {coding!r}; use one of {', '.join(spike_coding.CODINGS)}")
        if not adaptive and coding != "ternary":
            raise UserError(f"neuron {self.neuron!r} spikes are ternary; drop coding={coding!r} or use neuron adaptive")
        object.__setattr__(self, "coding", coding)
        if adaptive:
            if self.T is not None:
                raise UserError("T is the if/lif rate window; cap adaptive spikes with max_steps")
            for name in ("wta", "max_steps"):
                if getattr(self, name) is not None:
                    _whole(getattr(self, name), name, "or leave it unset")
            return
        for name in ("wta", "max_steps"):
            if getattr(self, name) is not None:
                raise UserError(f"{name} applies to adaptive integer spikes; for neuron {self.neuron!r} set T instead")
        T = DEFAULT_T if self.T is None else self.T
        _whole(T, "T", "it is the rate window in steps")
        object.__setattr__(self, "T", int(T))
        if not (_is_number(self.tau) and self.tau >= 1):
            raise UserError(f"tau must be ≥ 1 (1 = no memory, larger = slower leak), got {self.tau!r}")
        if self.reset not in RESETS:
            raise UserError(f"unknown reset {self.reset!r}; use one of {', '.join(RESETS)}")
        if not (_is_number(self.percentile) and 0 < self.percentile <= 100):
            raise UserError(f"percentile must be in (0, 100], got {self.percentile!r}; ann2snn uses 99.9")

    @classmethod
    def from_params(cls, params: Mapping) -> "SpikeConfig":
        """From a plan rule's params, naming unknown keys (a typo) instead of a TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UserError(f"unknown spike parameter(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        return cls(**params)


class SpikeLever(Lever):
    """Encodes a linear's input into spikes, decodes it back, and accumulates :class:`SpikeStats`."""

    def __init__(self, ctx: LinearContext, config: SpikeConfig):
        self.name, self.layer, self.site, self.config = ctx.name, ctx.layer, ctx.site, config
        self.stats = SpikeStats(ctx.in_features, ctx.out_features, config.coding)
        self.v_th: float | None = None
        if config.neuron != "adaptive":
            sample = (ctx.calibration or {}).get("abs_sample")
            if sample is None:
                raise UserError(f"neuron {config.neuron!r} needs calibration |x| samples for {ctx.name}; convert with "
                                "sparsescope.spiking.convert(), which calibrates, or pass calibration=calibrate(...)")
            self.v_th = calibrate_threshold(sample, config.percentile)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [tokens, in] → (signed counts s, spikes per entry, steps per token, value of one count)."""
        cfg = self.config
        if self.v_th is not None:
            spikes = rate_encode(x.abs(), self.v_th, cfg.T, cfg.neuron, cfg.reset, cfg.tau)
            counts = spikes.sum(0).to(torch.int64)
            s = (counts * x.sign().to(torch.int64)).to(torch.int32)
            steps = torch.full((x.shape[0],), cfg.T, dtype=torch.int64)
            return s, counts, steps, torch.tensor([[self.v_th / cfg.T]], dtype=torch.float32)
        s, v_th = spike_coding.encode(x, cfg.k)
        if cfg.coding == "binary" and bool((s < 0).any()):
            raise UserError(f"binary coding needs non-negative inputs but {self.name} gets negative values; "
                            "use coding 'ternary' or 'bitwise'")
        if cfg.max_steps is not None:
            s = spike_coding.clamp(s, cfg.coding, cfg.max_steps)
        top = s.abs().amax(-1).to(torch.int64)
        steps = torch.frexp(top.double())[1].to(torch.int64) if cfg.coding == "bitwise" else top  # bit_length
        steps = steps.clamp(min=1)
        if cfg.wta is None:
            return s, spike_coding.spike_counts(s, cfg.coding), steps, v_th
        spikes = spike_coding.expand(s, cfg.coding, wta=cfg.wta)
        return spike_coding.collapse(spikes, cfg.coding), spikes.abs().sum(0, dtype=torch.int64), steps, v_th

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1, x.shape[-1])
        s, counts, steps, scale = self.encode(flat.float())
        x_hat = s.to(scale.dtype) * scale
        self.stats.update(flat.float(), x_hat, s, counts, steps)
        return x_hat.to(x.dtype).view_as(x)


@register_lever("spike")
def spike_lever(ctx: LinearContext, **params) -> SpikeLever:
    """Lever factory: ``Rule("spike", {"k": 3, "coding": "bitwise", ...})``; see :class:`SpikeConfig`."""
    return SpikeLever(ctx, SpikeConfig.from_params(params))


def spike_plan(plan: Plan | Mapping | str | Path | None = None, *, layers: list[int] | None = None,
               sites: list[str] | None = None, **params) -> Plan:
    """A validated spiking plan: ``plan`` as given (a Plan, its dict, or a YAML path), or one rule from ``params``.

    Every ``"spike"`` rule's parameters are checked here, before any model is touched.
    """
    if plan is None:
        plan = Plan([Rule("spike", dict(params), layers, sites)], name="spike")
    elif params or layers is not None or sites is not None:
        raise UserError("pass either a plan or lever parameters (k, coding, layers, ...), not both")
    plan = Plan.coerce(plan)
    spike_rules = [r for r in plan.rules if r.lever == "spike"]
    if not spike_rules:
        raise UserError("the plan has no 'spike' rule; add one (lever: spike, params: {k: 3})")
    for rule in spike_rules:
        SpikeConfig.from_params(rule.params)
    return plan


def needs_calibration(plan: Plan) -> bool:
    """Whether some spike rule uses IF/LIF neurons (their thresholds come from calibration samples)."""
    return any(r.lever == "spike" and r.params.get("neuron", "adaptive") != "adaptive" for r in plan.rules)


def spike_levers(applied: Applied) -> list[SpikeLever]:
    """The spike levers of an applied plan, in model order."""
    return [lv for levers in applied.levers.values() for lv in levers if isinstance(lv, SpikeLever)]


def convert(lm: LoadedModel, plan: Plan | Mapping | str | Path | None = None, *,
            calibration: Mapping[str, Mapping[str, torch.Tensor]] | None = None, **params) -> Applied:
    """Convert ``lm``'s linears to spiking inputs in place; ``restore(lm)`` (or leaving the with-block) undoes it.

    ``plan``: a :class:`Plan` (or dict / YAML path) with ``"spike"`` rules, or none to build one rule from
    ``params`` (``k``, ``coding``, ``neuron``, ``T``, ..., ``layers``, ``sites``; default: every q/k/v/o,
    gate/up/down linear, k = 3, bitwise). IF/LIF thresholds come from ``calibration`` (computed on the bundled
    calibration text when not given). The model is left untouched when anything is wrong.
    """
    intervene.check_model(lm, "convert/restore")
    plan = spike_plan(plan, **params)
    if getattr(lm, "_applied", None) is not None:
        raise InterventionError("this model is already converted (a plan is applied); restore(lm) first")
    if calibration is None and needs_calibration(plan):
        from sparsescope.probes import load_text
        from sparsescope.record.calibration import calibrate

        calibration = calibrate(lm, load_text("calibration"))
    applied = intervene.apply(lm, plan, calibration)
    for name, levers in applied.levers.items():
        if sum(isinstance(lv, SpikeLever) for lv in levers) > 1:
            intervene.restore(lm)
            raise UserError(f"{name} gets more than one spike rule; give each linear one spike rule "
                            "(split the rules' layers or sites)")
    return applied


def restore(lm: LoadedModel) -> None:
    """Put the original linears back bit-exactly (raises UserError if nothing is converted)."""
    intervene.check_model(lm, "convert/restore")
    intervene.restore(lm)


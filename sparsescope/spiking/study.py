"""The ``spike`` experiment: convert a model, measure its spikes, energy and quality on held-out text, optionally
one layer at a time and over a parameter sweep. Returns tidy tables for the run store; the CLI only prints them.

Evaluations, each on the same held-out tokens: the dense reference, the whole converted model (whose spike
statistics fill the ``spikes`` and ``energy`` tables), one per converted layer with ``per_layer``, one per sweep value.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from sparsescope.errors import UserError
from sparsescope.eval import Evaluator
from sparsescope.intervene import Plan
from sparsescope.models.loading import LoadedModel
from sparsescope.spiking.convert import SpikeConfig, convert, needs_calibration, spike_levers
from sparsescope.cost import spiking_wins
from sparsescope.spiking.stats import BITS, aggregate, energy_table, spike_table

SWEEPABLE = ("k", "T", "tau", "percentile", "wta", "max_steps")
SWEEP_METRICS = ("spike_sparsity", "zero_frac", "firing_rate", "steps", "sops", "macs", "recon_cos")


@dataclass
class StudyConfig:
    """What to evaluate: held-out tokens, per-layer quality, a sweep ``("k", [2, 3, 4])``, energy preset."""

    eval_tokens: int = 1024  # held-out tokens per evaluation (≥ 32)
    seq_len: int = 256  # tokens per evaluated chunk
    per_layer: bool = False  # also convert each layer alone and evaluate it (one evaluation per layer)
    sweep: tuple[str, list[float]] | None = None  # one spike parameter and its values, e.g. ("k", [2, 3, 4])
    energy: str = "fp32"  # cost-model preset and bit widths: fp32, fp16 or int8

    def __post_init__(self) -> None:
        if int(self.eval_tokens) != self.eval_tokens or self.eval_tokens < 32:
            raise UserError(f"eval tokens must be a whole number ≥ 32, got {self.eval_tokens!r}")
        if self.energy not in BITS:
            raise UserError(f"unknown energy preset {self.energy!r}; use one of {', '.join(BITS)}")


@dataclass
class StudyResult:
    tables: dict[str, pd.DataFrame]  # spikes, energy, quality and, with a sweep, sweep
    layers: pd.DataFrame  # per-layer summary (sparsity, SOPs, energy savings, Δppl), last row "total"
    timings: dict[str, float] = field(default_factory=dict)


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``"k=2,2.5,3"`` → ``("k", [2.0, 2.5, 3.0])``."""
    name, _, values = text.partition("=")
    name = name.strip()
    if name not in SWEEPABLE or not values.strip():
        raise UserError(f"bad sweep {text!r}; write PARAM=v1,v2,... with PARAM one of {', '.join(SWEEPABLE)}")
    try:
        numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad sweep values in {text!r}; give numbers, e.g. k=2,2.5,3") from None
    return name, [int(v) if name in ("T", "wta", "max_steps") and v == int(v) else v for v in numbers]


def with_param(plan: Plan, name: str, value: float) -> Plan:
    """A copy of ``plan`` whose spike rules all have ``name = value`` (validated)."""
    new = copy.deepcopy(plan)
    for rule in new.rules:
        if rule.lever == "spike":
            rule.params[name] = value
            SpikeConfig.from_params(rule.params)
    return new


def only_layer(plan: Plan, layer: int) -> Plan:
    """A copy of ``plan`` restricted to one layer (rules that skip it are dropped)."""
    rules = [copy.deepcopy(r) for r in plan.rules if r.layers is None or layer in r.layers]
    for r in rules:
        r.layers = [layer]
    return Plan(rules, f"{plan.name}@layer{layer}")


def n_evaluations(plan_layers: Sequence[int], config: StudyConfig) -> int:
    return 2 + (len(plan_layers) if config.per_layer else 0) + (len(config.sweep[1]) if config.sweep else 0)


def plan_layers(lm: LoadedModel, plan: Plan) -> list[int]:
    """Layers some spike rule touches; raises UserError if a rule names a layer or weight site ``lm`` lacks."""
    layers = set()
    for r in plan.rules:
        for layer in r.layers if r.layers is not None else range(lm.n_layers):
            for wsite in r.sites if r.sites is not None else lm.sites.weight_sites:
                lm.sites.linear(layer, wsite)
            if r.lever == "spike":
                layers.add(layer)
    return sorted(layers)


def run_study(lm: LoadedModel, plan: Plan, texts: str | Sequence[str], config: StudyConfig = StudyConfig(),
              run_id: str = "", progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run every evaluation of the experiment (see the module docstring); ``progress(label)`` after each."""
    tick = progress or (lambda label: None)
    timings: dict[str, float] = {}
    evaluator = Evaluator(lm, texts, seq_len=config.seq_len, max_tokens=config.eval_tokens)
    start = time.perf_counter()
    evaluator.reference()
    timings["dense_eval_s"] = time.perf_counter() - start
    tick("dense")
    calibration = None
    if needs_calibration(plan):
        from sparsescope.probes import load_text
        from sparsescope.record.calibration import calibrate

        start = time.perf_counter()
        calibration = calibrate(lm, load_text("calibration"))
        timings["calibrate_s"] = time.perf_counter() - start

    def evaluate(p: Plan) -> tuple[dict, list]:
        start = time.perf_counter()
        with convert(lm, p, calibration=calibration) as applied:
            timings.setdefault("convert_s", time.perf_counter() - start)
            start = time.perf_counter()
            result = evaluator.evaluate()
            timings.setdefault("spike_eval_s", time.perf_counter() - start)
            return result, spike_levers(applied)

    quality = [_quality_rows(evaluator.dense_ppl, "dense", -1, {}, evaluator.n_tokens)]
    whole, levers = evaluate(plan)
    quality.append(_quality_rows(evaluator.dense_ppl, "model", -1, whole, evaluator.n_tokens))
    tick("whole model")
    per_layer = {}
    if config.per_layer:
        for layer in plan_layers(lm, plan):
            per_layer[layer], _ = evaluate(only_layer(plan, layer))
            quality.append(_quality_rows(evaluator.dense_ppl, "layer", layer, per_layer[layer], evaluator.n_tokens))
            tick(f"layer {layer}")
    energy = energy_table(levers, config.energy)
    tables = {"spikes": spike_table(levers, run_id, lm.name),
              "energy": _tag(energy, run_id, lm.name),
              "quality": _tag(pd.concat(quality, ignore_index=True), run_id, lm.name)}
    if config.sweep:
        name, values = config.sweep
        rows = []
        for value in values:
            result, swept = evaluate(with_param(plan, name, value))
            stats = aggregate([lv.stats for lv in swept])
            metrics = {m: stats[m] for m in SWEEP_METRICS} | {m: result[m] for m in ("ppl", "delta_ppl", "kl")}
            rows += [{"run_id": run_id, "model": lm.name, "param": name, "setting": float(value), "metric": m,
                      "value": float(v), "n_tokens": evaluator.n_tokens} for m, v in metrics.items()]
            tick(f"{name}={value}")
        tables["sweep"] = pd.DataFrame(rows)
    return StudyResult(tables, layer_summary(levers, energy, per_layer), timings)


def _tag(df: pd.DataFrame, run_id: str, model: str) -> pd.DataFrame:
    """``df`` with leading ``run_id`` and ``model`` columns, like every tidy table."""
    return pd.concat([pd.DataFrame({"run_id": run_id, "model": model}, index=df.index), df], axis=1)


def _quality_rows(dense_ppl: float, scope: str, layer: int, result: dict, n_tokens: int) -> pd.DataFrame:
    values = {"ppl": dense_ppl} if scope == "dense" else {m: result[m] for m in ("ppl", "delta_ppl", "kl")}
    return pd.DataFrame([{"scope": scope, "layer": layer, "metric": m, "value": float(v), "n_tokens": n_tokens}
                         for m, v in values.items()])


def layer_summary(levers: Sequence, energy: pd.DataFrame, per_layer: dict[int, dict]) -> pd.DataFrame:
    """One row per converted layer and a ``total`` row (layer -1): spike sparsity, zero share, mean steps, SOPs,
    MACs, energy saving of spiking vs dense without / with memory traffic, quantized÷spiking total energy
    (> 1: spiking wins), whether spiking wins on total, and Δppl when that layer alone was converted."""
    wide = energy.pivot_table(index="layer", columns="method", values=["energy_compute_uJ", "energy_total_uJ"],
                              aggfunc="sum")
    verdict = spiking_wins(energy.groupby(["layer", "method"], as_index=False).sum(numeric_only=True)
                           .assign(name=lambda d: d["layer"]))
    verdict = verdict.set_index("name")
    rows = []
    for layer in [*sorted({lv.layer for lv in levers}), -1]:
        stats = aggregate([lv.stats for lv in levers if layer in (-1, lv.layer)])
        e = wide.loc[layer]
        rows.append({
            "layer": layer,
            "spike_sparsity": stats["spike_sparsity"],
            "zero_frac": stats["zero_frac"],
            "steps": stats["steps"],
            "sops": stats["sops"],
            "macs": stats["macs"],
            "saving_compute": 1 - e["energy_compute_uJ", "spiking"] / e["energy_compute_uJ", "dense"],
            "saving_total": 1 - e["energy_total_uJ", "spiking"] / e["energy_total_uJ", "dense"],
            "quantized_over_spiking": float(verdict.loc[layer, "total_ratio"]),
            "wins_on_compute": bool(verdict.loc[layer, "wins_on_compute"]),
            "wins_on_total": bool(verdict.loc[layer, "wins_on_total"]),
            "delta_ppl": per_layer.get(layer, {}).get("delta_ppl", float("nan")),
        })
    return pd.DataFrame(rows)

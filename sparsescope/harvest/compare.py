"""The head-to-head: dense, weight quantization, activation sparsity (TEAL) and spiking on one footing.

Every configuration is a plan (compositions are plans with two rules), evaluated on the same held-out tokens
against the same dense reference (one ``Evaluator``), and costed by the same energy model
(``sparsescope.cost``) fed with what the levers measured during that evaluation: realised input
densities (TEAL), spike counts and steps (spiking), and the stored bits per weight including scales (quant).

Per linear and token: weights are read for non-zero inputs only (batch-1 decode, see ``energy``); quantized
scales add ``bits_per_param − weight_bits`` to every weight read. Compute is priced at the precision the
multiply actually runs at: weight-only quantization dequantizes into the activation's format (fp32 MACs),
W8A8 runs int8 MACs, a ternary weight turns each MAC into an add, and a spike is one add (AC) at the weight's
precision. Each spiking row has a ``spike comparator`` twin (Yan et al. 2024): the same layer with
⌈log2(T+1)⌉-bit (bitwise coding: T-bit) activations, which computes the same x̂ and therefore the same outputs.
Counted: the block linears (q/k/v/o, gate/up/down). Not counted: embeddings, the LM head, attention scores,
norms, and the cost of dequantizing scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from sparsescope.errors import UserError, check_whole
from sparsescope.eval import Evaluator
from sparsescope.intervene import Applied, Lever, Plan, Rule, apply
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import linear_weight, site_name
from sparsescope.spiking.convert import SpikeLever
from sparsescope.cost import EnergyConstants, LinearCost, bytes_moved, dense_macs, energy, sops, sparse_macs
from sparsescope.record.calibration import calibrate
from sparsescope.levers.quant import ActQuantLever, QuantLever
from sparsescope.levers.teal import TealLever

COLUMNS = ["method", "config", "ppl", "delta_ppl", "kl", "n_tokens", "bits_per_weight", "input_density",
           "bytes_per_token", "weight_bytes_per_token", "act_bytes_per_token", "ops_per_token", "macs_per_token",
           "sops_per_token", "energy_uJ_per_token", "energy_compute_uJ_per_token", "energy_memory_uJ_per_token",
           "compute", "eval_s"]


@dataclass
class CompareConfig:
    """What to compare and on how much text. Every configuration costs one evaluation of ``eval_tokens``."""

    eval_tokens: int = 1024  # held-out tokens per evaluation (≥ 32), the same chunks for every configuration
    seq_len: int = 256  # tokens per evaluated chunk
    calib_tokens: int = 2048  # calibration tokens for TEAL thresholds
    group_size: int = 64  # inputs per scale of group quantization; SmolLM2's widths (576, 1536) need 64 or 32
    teal: tuple[float, ...] = (0.25, 0.5, 0.7)  # TEAL activation sparsities, in (0, 1)
    spike_k: tuple[float, ...] = (2, 3, 4)  # spiking thresholds k (v_th = mean|x| / k), > 0
    spike_coding: str = "bitwise"  # spike coding: binary, ternary or bitwise
    compositions: bool = True  # also int8 weights + spiking and int4 weights + TEAL

    def __post_init__(self) -> None:
        check_whole(self.eval_tokens, "eval tokens", 32)
        check_whole(self.seq_len, "seq len", 2, "each chunk needs a token and its successor; pass e.g. 256")
        check_whole(self.calib_tokens, "calibration tokens", 1)
        check_whole(self.group_size, "group size", 1, "pass e.g. 64 or 32")
        if not all(0 < s < 1 for s in self.teal):
            raise UserError(f"TEAL sparsities must lie in (0, 1), got {list(self.teal)}; pass e.g. 0.25,0.5,0.7")
        if not all(k > 0 for k in self.spike_k):
            raise UserError(f"spike k must be > 0, got {list(self.spike_k)}; pass e.g. 2,3,4")


def configurations(cfg: CompareConfig) -> list[tuple[str, str, Plan]]:
    """(method, config, plan) in table order."""
    g = {"granularity": "group", "group_size": cfg.group_size}
    spike = {"coding": cfg.spike_coding}
    out = [
        ("dense", "fp32", Plan([])),
        ("dense", "fp16", Plan([Rule("quant", {"bits": "fp16"}), Rule("act_quant", {"bits": "fp16"})])),
        ("weight quant", "int8 per-channel", Plan([Rule("quant", {"bits": 8})])),
        ("weight quant", f"int8 group {cfg.group_size}", Plan([Rule("quant", {"bits": 8} | g)])),
        ("weight quant", "int4 per-channel", Plan([Rule("quant", {"bits": 4})])),
        ("weight quant", f"int4 group {cfg.group_size}", Plan([Rule("quant", {"bits": 4} | g)])),
        ("weight quant", "ternary", Plan([Rule("quant", {"bits": "ternary"})])),
        ("act quant", "int8 per-token", Plan([Rule("act_quant", {"bits": 8})])),
        ("weight+act quant", "W8A8", Plan([Rule("quant", {"bits": 8}), Rule("act_quant", {"bits": 8})])),
    ]
    out += [("TEAL", f"{s:.0%}", Plan([Rule("teal", {"sparsity": s})])) for s in cfg.teal]
    out += [("spiking", f"k={k:g} {cfg.spike_coding}", Plan([Rule("spike", {"k": k} | spike)])) for k in cfg.spike_k]
    if cfg.compositions:
        k = cfg.spike_k[len(cfg.spike_k) // 2] if cfg.spike_k else 3
        out.append(("int8 + spiking", f"int8 per-channel, k={k:g} {cfg.spike_coding}",
                    Plan([Rule("quant", {"bits": 8}), Rule("spike", {"k": k} | spike)])))
        s = 0.5 if 0.5 in cfg.teal or not cfg.teal else cfg.teal[len(cfg.teal) // 2]
        out.append(("int4 + TEAL", f"int4 group {cfg.group_size}, {s:.0%}",
                    Plan([Rule("quant", {"bits": 4} | g), Rule("teal", {"sparsity": s})])))
    return out


def _last(levers: Sequence[Lever], cls: type) -> Lever | None:
    return next((lv for lv in reversed(levers) if isinstance(lv, cls)), None)


def compute_constants(weight_bits: int, act_bits: int, spiking: bool, ternary: bool) -> tuple[str, EnergyConstants]:
    """(name, constants) for the precision a linear's multiplies run at (see the module docstring).

    A spiking linear (and its comparator) adds weights, so its precision is the weights'; otherwise the wider
    of weights and activations sets it, and ternary weights turn multiplies into adds.
    """
    wide = weight_bits if spiking else max(weight_bits, act_bits)
    name = "int8" if wide <= 8 else "fp16" if wide <= 16 else "fp32"
    constants = EnergyConstants.preset(name)
    if ternary and not spiking:
        return f"{name} adds", replace(constants, mac_pJ=constants.ac_pJ)
    return name, constants


def linear_cost(name: str, in_features: int, out_features: int, levers: Sequence[Lever],
                comparator: bool = False) -> dict[str, float]:
    """Per-token bytes, ops and energy (pJ) of one linear under its levers' measured statistics.

    ``comparator``: price a spiking linear as its quantized comparator instead.
    """
    quant, act = _last(levers, QuantLever), _last(levers, ActQuantLever)
    teal, spike = _last(levers, TealLever), _last(levers, SpikeLever)
    wb = quant.weight_bits if quant else 32
    bpp = quant.bits_per_param if quant else 32.0
    ab = act.act_bits if act else 32
    label, constants = compute_constants(wb, ab, spike is not None, quant is not None and quant.bits == "ternary")
    if spike is not None:
        if not spike.stats.tokens:
            raise UserError(f"{name}: the spike lever saw no tokens; evaluate the model before costing it")
        costs = [replace(c, weight_bits=wb, act_bits=ab) for c in spike.stats.costs(name)]
        method, tokens = ("quantized" if comparator else "spiking"), spike.stats.tokens
        label += " low-bit MACs" if comparator else " ACs"
    else:
        density = teal.input_density if teal else 1.0
        costs = [LinearCost(name, in_features, out_features, weight_bits=wb, act_bits=ab, input_density=density)]
        method, tokens = ("sparse" if teal else "dense"), 1
        label += "" if label.endswith("adds") else " MACs"
    total = dict.fromkeys(("weight_bytes", "act_bytes", "macs", "sops", "compute_pJ", "memory_pJ", "dense_macs",
                           "done_macs"), 0.0)
    for c in costs:
        moved = bytes_moved(c, method)
        weight_bytes = moved["weight_bytes"] * bpp / wb  # the scales travel with the weights
        total["weight_bytes"] += weight_bytes
        total["act_bytes"] += moved["act_bytes"]
        total["macs"] += 0.0 if method == "spiking" else (dense_macs(c) if method == "dense" else sparse_macs(c))
        total["sops"] += sops(c) if method == "spiking" else 0.0
        total["compute_pJ"] += energy(c, method, constants)["compute_pJ"]
        total["memory_pJ"] += (weight_bytes * constants.weight_pJ_per_byte
                               + moved["act_bytes"] * constants.act_pJ_per_byte)
        total["dense_macs"] += dense_macs(c)
        total["done_macs"] += c.input_density * dense_macs(c)
    per_token = {k: v / tokens for k, v in total.items()}
    return per_token | {"bits_per_weight": bpp, "params": in_features * out_features, "compute": label}


def plan_cost(applied: Applied, shapes: dict[str, tuple[int, int]], comparator: bool = False) -> dict[str, object]:
    """Model-level per-token figures: sums over every block linear (``shapes[name] = (in, out)``)."""
    rows = [linear_cost(name, i, o, applied.levers.get(name, []), comparator) for name, (i, o) in shapes.items()]
    df = pd.DataFrame(rows)
    pJ = df["compute_pJ"].sum() + df["memory_pJ"].sum()
    return {
        "bits_per_weight": float((df["bits_per_weight"] * df["params"]).sum() / df["params"].sum()),
        "input_density": float(df["done_macs"].sum() / df["dense_macs"].sum()),
        "bytes_per_token": float(df["weight_bytes"].sum() + df["act_bytes"].sum()),
        "weight_bytes_per_token": float(df["weight_bytes"].sum()),
        "act_bytes_per_token": float(df["act_bytes"].sum()),
        "ops_per_token": float(df["macs"].sum() + df["sops"].sum()),
        "macs_per_token": float(df["macs"].sum()),
        "sops_per_token": float(df["sops"].sum()),
        "energy_uJ_per_token": float(pJ / 1e6),
        "energy_compute_uJ_per_token": float(df["compute_pJ"].sum() / 1e6),
        "energy_memory_uJ_per_token": float(df["memory_pJ"].sum() / 1e6),
        "compute": " / ".join(dict.fromkeys(df["compute"])),
    }


def linear_shapes(lm: LoadedModel) -> dict[str, tuple[int, int]]:
    """``{"blocks.3.mlp.W_out": (in, out)}`` for every block linear (fused q/k/v once, under its first site)."""
    out = {}
    for layer, ws in lm.sites.linear_names():
        w = linear_weight(lm.sites.linear(layer, ws))
        out[site_name(layer, ws)] = (w.shape[1], w.shape[0])
    return out


def check(lm: LoadedModel, cfg: CompareConfig) -> None:
    """Refuse a configuration this model cannot take before anything is evaluated (group size vs widths)."""
    bad = sorted({i for i, _ in linear_shapes(lm).values() if i % cfg.group_size})
    if bad:
        raise UserError(f"group size {cfg.group_size} does not divide the input width(s) {bad}; pick a common "
                        f"divisor such as {math.gcd(*bad, cfg.group_size)}")


def compare(lm: LoadedModel, heldout: str | Sequence[str], calibration_text: str, cfg: CompareConfig = CompareConfig(),
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Evaluate and cost every configuration; one row each (``COLUMNS``), plus a comparator row per spiking one.

    ``progress(label)`` is called after each evaluation (and after calibrating).
    """
    tick = progress or (lambda label: None)
    check(lm, cfg)
    shapes = linear_shapes(lm)
    evaluator = Evaluator(lm, heldout, seq_len=cfg.seq_len, max_tokens=cfg.eval_tokens)
    evaluator.reference()
    calibration = calibrate(lm, calibration_text, max_tokens=cfg.calib_tokens)
    tick("calibration")
    rows = []
    for method, config, plan in configurations(cfg):
        start = time.perf_counter()
        with apply(lm, plan, calibration) as applied:
            quality = evaluator.evaluate()
        seconds = time.perf_counter() - start
        rows.append({"method": method, "config": config} | quality | plan_cost(applied, shapes) | {"eval_s": seconds})
        if any(r.lever == "spike" for r in plan.rules):
            rows.append({"method": f"{method} comparator", "config": config} | quality
                        | plan_cost(applied, shapes, comparator=True) | {"eval_s": 0.0})
        tick(f"{method} {config}")
    return pd.DataFrame(rows)[COLUMNS]


def n_steps(cfg: CompareConfig) -> int:
    """Progress ticks ``compare`` makes: calibration plus one per configuration."""
    return 1 + len(configurations(cfg))


def pareto_front(cost: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """Mask of points no other point beats: none has cost ≤ and loss ≤ with one of them strictly lower."""
    c, q = np.asarray(cost, float), np.asarray(loss, float)
    dominated = ((c[None, :] <= c[:, None]) & (q[None, :] <= q[:, None])
                 & ((c[None, :] < c[:, None]) | (q[None, :] < q[:, None]))).any(axis=1)
    return ~dominated



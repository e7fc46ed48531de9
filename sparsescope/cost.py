"""The cost model: energy, bytes and operations of one linear layer as dense, input-sparse, spiking or low-bit
quantized. Spiking (`spiking.stats`), the head-to-head (`harvest.compare`) and the planner price their rows here.

Compute figures are the 45 nm numbers of M. Horowitz, "Computing's energy problem (and what we can do about
it)", ISSCC 2014 (the figures the SNN literature quotes): fp32 add 0.9 pJ, mult 3.7 pJ (MAC 4.6 pJ); fp16 add
0.4 pJ, mult 1.1 pJ (MAC 1.5 pJ); int8 add 0.03 pJ, mult 0.2 pJ (MAC 0.23 pJ). An accumulate (AC, what a spike
costs) is one add. Memory from the same table, per 64-bit access: SRAM 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ;
DRAM 1.3–2.6 nJ, i.e. 162.5–325 pJ per byte.

Defaults: weights stream from DRAM at 162.5 pJ/byte (the *low* end, so the memory term is if anything
understated: a language model's weights do not fit on chip and are read once per decoded token);
activations stay in a 32 KB-class SRAM at 2.5 pJ/byte (one token's vectors are a few KB).

The fair comparator for a T-step spiking layer is the same layer with ⌈log2(T+1)⌉-bit activations (Z. Yan,
Z. Bai, W.-F. Wong, "Reconsidering the energy efficiency of spiking neural networks", arXiv:2409.08290, 2024):
both can express the same T+1 levels, and both skip zero inputs. Counting only ACs against fp32 MACs, and
ignoring memory traffic, is what makes spiking look cheap.

Cost model per token (a layer's numbers are these × ``tokens``; ``d`` = input_density, ``b`` = comparator bits):

==========  ===================================  ==================  ====================================
method      compute                              weight bytes        activation bytes
==========  ===================================  ==================  ====================================
dense       in·out MACs                          in·out·wb/8         (in + out)·ab/8
sparse      d·in·out MACs (zero inputs skipped)  d·in·out·wb/8       (in + out)·ab/8
spiking     rate·T·in·out ACs (SOPs)             d·in·out·wb/8       T·(in·sb + 2·out·ab)/8
quantized   d·in·out MACs at min(b·AC, MAC)      d·in·out·wb/8       (in·(b + sign) + out·ab)/8
==========  ===================================  ==================  ====================================

Weights are read once per token (batch-1 decode; a batched prefill reads them once per batch, so this
overstates its traffic), only for input channels that are non-zero (a spiking channel's weights are held on chip
over its T steps). Spike maps take sb = 1 bit per channel per step (binary) or 2 (signed ternary/bitwise
spikes); the spiking layer's output potentials are read and written every step (the membrane traffic that
compute-only SNN estimates leave out).
A b-bit activation times a weight costs b shifted adds (bit-serial) or one full MAC, whichever is cheaper.
Comparator magnitude bits b: ⌈log2(T+1)⌉ for the rate codes (binary, ternary), T for bitwise; the signed
codings (ternary, bitwise) store one more sign bit (sign = 1), which costs no add.
"""

from dataclasses import dataclass, replace

import pandas as pd

from sparsescope.errors import UserError
COST_METHODS = ("dense", "sparse", "spiking", "quantized")
CODINGS = ("binary", "ternary", "bitwise")  # the spike codings priced here; `spiking.coding` implements them


@dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation and per byte moved (pJ). See the module docstring for sources."""

    name: str
    mac_pJ: float
    ac_pJ: float
    weight_pJ_per_byte: float = 162.5  # DRAM, Horowitz 2014: 1.3 nJ per 64-bit access (low end)
    act_pJ_per_byte: float = 2.5  # 32 KB SRAM, Horowitz 2014: 20 pJ per 64-bit access

    @classmethod
    def preset(cls, name: str, **overrides: float) -> "EnergyConstants":
        """One of ``fp32``, ``fp16``, ``int8``, optionally with fields replaced (e.g. weight_pJ_per_byte=12.5)."""
        if name not in PRESETS:
            raise UserError(f"unknown energy preset {name!r}; use one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS = {
    "fp32": EnergyConstants("fp32", mac_pJ=4.6, ac_pJ=0.9),
    "fp16": EnergyConstants("fp16", mac_pJ=1.5, ac_pJ=0.4),
    "int8": EnergyConstants("int8", mac_pJ=0.23, ac_pJ=0.03),
}


@dataclass(frozen=True)
class LinearCost:
    """One linear layer's shape and workload.

    ``input_density``: share of non-zero inputs (for spikes: of s ≠ 0). ``firing_rate``: spikes per input channel
    per step (``spike_stats(...)["firing_rate"]``), needed for the spiking method. ``steps``: T.
    """

    name: str
    in_features: int
    out_features: int
    tokens: int = 1
    weight_bits: int = 32
    act_bits: int = 32
    input_density: float = 1.0
    firing_rate: float | None = None
    steps: int = 1
    coding: str = "ternary"

    def __post_init__(self) -> None:
        for field in ("in_features", "out_features", "tokens", "weight_bits", "act_bits", "steps"):
            value = getattr(self, field)
            if int(value) != value or value < 1:
                raise UserError(f"{self.name}: {field} must be a whole number ≥ 1, got {value!r}")
        if not 0 <= self.input_density <= 1:
            raise UserError(f"{self.name}: input_density must be in [0, 1], got {self.input_density!r}")
        if self.firing_rate is not None and not 0 <= self.firing_rate <= self.input_density:
            raise UserError(
                f"{self.name}: firing_rate {self.firing_rate!r} must be in [0, input_density={self.input_density}] "
                "(a channel with s = 0 never spikes); pass the measured spike_stats values"
            )
        if self.coding not in CODINGS:
            raise UserError(f"{self.name}: unknown coding {self.coding!r}; use one of {', '.join(CODINGS)}")


def dense_macs(c: LinearCost) -> float:
    """MACs of the dense layer: tokens·in·out."""
    return float(c.tokens * c.in_features * c.out_features)


def sparse_macs(c: LinearCost) -> float:
    """MACs when zero inputs are skipped: input_density·tokens·in·out."""
    return c.input_density * dense_macs(c)


def sops(c: LinearCost) -> float:
    """Synaptic operations of the spiking layer: firing_rate·T·tokens·in (spikes) × out (fan-out)."""
    if c.firing_rate is None:
        raise UserError(f"{c.name}: no firing_rate; set it (spikes per input channel per step) to cost spiking")
    return c.firing_rate * c.steps * dense_macs(c)


def comparator_bits(c: LinearCost) -> int:
    """Magnitude bits of the quantized activations equivalent to T spike steps (Yan et al. 2024), sign excluded."""
    return int(c.steps) if c.coding == "bitwise" else int(c.steps).bit_length()  # bit_length(T) = ⌈log2(T+1)⌉


def bytes_moved(c: LinearCost, method: str) -> dict[str, float]:
    """Bytes read or written for the layer: ``weight_bytes``, ``act_bytes`` (table in the module docstring)."""
    if method not in COST_METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(COST_METHODS)}")
    density = 1.0 if method == "dense" else c.input_density
    weight_bits = density * c.in_features * c.out_features * c.weight_bits
    if method == "spiking":
        spike_bits = 1 if c.coding == "binary" else 2
        act_bits = c.steps * (c.in_features * spike_bits + 2 * c.out_features * c.act_bits)
    elif method == "quantized":
        act_bits = c.in_features * (comparator_bits(c) + (c.coding != "binary")) + c.out_features * c.act_bits
    else:
        act_bits = (c.in_features + c.out_features) * c.act_bits
    return {"weight_bytes": c.tokens * weight_bits / 8, "act_bytes": c.tokens * act_bits / 8}


def _ops(c: LinearCost, method: str, k: EnergyConstants) -> tuple[float, float, float]:
    """(macs, sops, compute pJ) of one method."""
    if method == "dense":
        return dense_macs(c), 0.0, dense_macs(c) * k.mac_pJ
    if method == "sparse":
        return sparse_macs(c), 0.0, sparse_macs(c) * k.mac_pJ
    if method == "spiking":
        return 0.0, sops(c), sops(c) * k.ac_pJ
    return sparse_macs(c), 0.0, sparse_macs(c) * min(comparator_bits(c) * k.ac_pJ, k.mac_pJ)


def energy(c: LinearCost, method: str, constants: EnergyConstants = PRESETS["fp32"]) -> dict[str, float]:
    """Energy of the layer in pJ: ``compute_pJ``, ``memory_pJ`` (weights + activations), ``total_pJ``."""
    moved = bytes_moved(c, method)
    compute = _ops(c, method, constants)[2]
    memory = moved["weight_bytes"] * constants.weight_pJ_per_byte + moved["act_bytes"] * constants.act_pJ_per_byte
    return {"compute_pJ": compute, "memory_pJ": memory, "total_pJ": compute + memory}


def cost_table(
    costs: list[LinearCost],
    constants: EnergyConstants = PRESETS["fp32"],
    methods: tuple[str, ...] = COST_METHODS,
) -> pd.DataFrame:
    """Tidy table: one row per layer and method, plus a ``total`` row per method.

    Columns: name, method, constants, macs, sops, weight_bytes, act_bytes, bytes, energy_compute_uJ,
    energy_memory_uJ, energy_total_uJ.
    """
    names = [c.name for c in costs]
    if not names or len(set(names)) < len(names) or "total" in names:
        raise UserError("cost_table needs at least one layer, with unique names other than 'total'")
    rows = []
    for c in costs:
        for method in methods:
            moved, e = bytes_moved(c, method), energy(c, method, constants)
            macs, n_sops, _ = _ops(c, method, constants)
            rows.append({
                "name": c.name,
                "method": method,
                "constants": constants.name,
                "macs": macs,
                "sops": n_sops,
                **moved,
                "bytes": moved["weight_bytes"] + moved["act_bytes"],
                "energy_compute_uJ": e["compute_pJ"] / 1e6,
                "energy_memory_uJ": e["memory_pJ"] / 1e6,
                "energy_total_uJ": e["total_pJ"] / 1e6,
            })
    table = pd.DataFrame(rows)
    totals = table.groupby("method", sort=False).sum(numeric_only=True).reset_index()
    totals["name"], totals["constants"] = "total", constants.name
    return pd.concat([table, totals[table.columns]], ignore_index=True)


def spiking_wins(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (and total): does spiking beat its quantized comparator, on compute alone and in total?

    Columns: name, spiking_compute_uJ, quantized_compute_uJ, spiking_total_uJ, quantized_total_uJ,
    wins_on_compute, wins_on_total, total_ratio (quantized / spiking; > 1 means spiking is cheaper).
    """
    missing = {"spiking", "quantized"} - set(table["method"])
    if missing:
        raise UserError(f"the cost table lacks method(s) {sorted(missing)}; build it with methods incl. both")
    wide = table.pivot(index="name", columns="method", values=["energy_compute_uJ", "energy_total_uJ"])
    out = pd.DataFrame({
        "spiking_compute_uJ": wide["energy_compute_uJ", "spiking"],
        "quantized_compute_uJ": wide["energy_compute_uJ", "quantized"],
        "spiking_total_uJ": wide["energy_total_uJ", "spiking"],
        "quantized_total_uJ": wide["energy_total_uJ", "quantized"],
    })
    out["wins_on_compute"] = out["spiking_compute_uJ"] < out["quantized_compute_uJ"]
    out["wins_on_total"] = out["spiking_total_uJ"] < out["quantized_total_uJ"]
    out["total_ratio"] = out["quantized_total_uJ"] / out["spiking_total_uJ"]
    order = list(dict.fromkeys(table["name"]))
    return out.reindex(order).reset_index()

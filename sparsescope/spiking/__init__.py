"""Spiking conversion: integer spike coding, IF/LIF neurons and the energy/ops model (see design §6–7)."""

from sparsescope.spiking.coding import (
    CODINGS,
    clamp,
    collapse,
    decode,
    encode,
    expand,
    max_level,
    spike_counts,
    spike_stats,
    sops,
    steps_needed,
)
from sparsescope.spiking.energy import EnergyConstants, LinearCost, cost_table, energy, spiking_wins
from sparsescope.spiking.neurons import calibrate_threshold, rate_decode, rate_encode

__all__ = [
    "CODINGS",
    "EnergyConstants",
    "LinearCost",
    "calibrate_threshold",
    "clamp",
    "collapse",
    "cost_table",
    "decode",
    "encode",
    "energy",
    "expand",
    "max_level",
    "rate_decode",
    "rate_encode",
    "spike_counts",
    "spike_stats",
    "spiking_wins",
    "sops",
    "steps_needed",
]

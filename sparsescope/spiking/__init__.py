"""Spiking conversion: integer spike coding, IF/LIF neurons, the ``spike`` lever with convert/restore, spike
statistics (priced by `sparsescope.cost`) (see design §6–7, §9–10)."""

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
    steps_needed,
)
from sparsescope.spiking.convert import SpikeConfig, SpikeLever, convert, restore, spike_levers, spike_plan
from sparsescope.spiking.neurons import calibrate_threshold, rate_decode, rate_encode
from sparsescope.spiking.stats import SpikeStats, aggregate, energy_table, spike_table

__all__ = [
    "CODINGS",
    "SpikeConfig",
    "SpikeLever",
    "SpikeStats",
    "aggregate",
    "calibrate_threshold",
    "clamp",
    "collapse",
    "convert",
    "decode",
    "encode",
    "energy_table",
    "expand",
    "max_level",
    "rate_decode",
    "rate_encode",
    "restore",
    "spike_counts",
    "spike_levers",
    "spike_plan",
    "spike_stats",
    "spike_table",
    "steps_needed",
]

"""Energy/ops model: Horowitz constants, the design's worked check, brute-force byte counts, verdicts memory flips."""

import pandas as pd
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.spiking import coding
from sparsescope.cost import (
    COST_METHODS,
    EnergyConstants,
    LinearCost,
    bytes_moved,
    comparator_bits,
    cost_table,
    dense_macs,
    energy,
    sops,
    sparse_macs,
    spiking_wins,
)

# Horowitz, ISSCC 2014, 45 nm (pJ): (multiply, add)
HOROWITZ = {"fp32": (3.7, 0.9), "fp16": (1.1, 0.4), "int8": (0.2, 0.03)}
FP32, FP16 = EnergyConstants.preset("fp32"), EnergyConstants.preset("fp16")


def test_presets_are_horowitz_mult_plus_add():
    for name, (mult, add) in HOROWITZ.items():
        k = EnergyConstants.preset(name)
        assert k.mac_pJ == pytest.approx(mult + add) and k.ac_pJ == pytest.approx(add)
    assert FP32.weight_pJ_per_byte == pytest.approx(1300 / 8)  # DRAM: 1.3 nJ per 64-bit access
    assert FP32.act_pJ_per_byte == pytest.approx(20 / 8)  # 32 KB SRAM: 20 pJ per 64-bit access
    assert EnergyConstants.preset("int8", weight_pJ_per_byte=12.5).weight_pJ_per_byte == 12.5


def test_design_worked_check():
    # 4096×4096 at firing rate 0.3 over T = 3: 16.78 M MACs × 4.6 pJ = 77.2 µJ vs 15.1 M SOPs × 0.9 pJ = 13.6 µJ
    c = LinearCost("w", 4096, 4096, firing_rate=0.3, steps=3)
    assert f"{dense_macs(c) / 1e6:.4g}" == "16.78" and f"{sops(c) / 1e6:.3g}" == "15.1"
    assert f"{energy(c, 'dense', FP32)['compute_pJ'] / 1e6:.3g}" == "77.2"
    assert f"{energy(c, 'spiking', FP32)['compute_pJ'] / 1e6:.3g}" == "13.6"


def test_bytes_moved_brute_force():
    # count, token by token, the weight columns an input-sparse layer has to read and the values it moves
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g) * (torch.rand(6, 10, generator=g) < 0.4)
    out, wb, ab, steps = 7, 8, 16, 3
    nonzero = int((x != 0).sum())
    c = LinearCost("l", 10, out, tokens=6, weight_bits=wb, act_bits=ab, input_density=nonzero / 60, steps=steps)
    weight_bits = sum(out * wb for t in range(6) for i in range(10) if x[t, i] != 0)
    assert bytes_moved(c, "dense") == {"weight_bytes": 6 * 10 * out * wb / 8, "act_bytes": 6 * (10 + out) * ab / 8}
    assert bytes_moved(c, "sparse")["weight_bytes"] == pytest.approx(weight_bits / 8)
    assert bytes_moved(c, "spiking")["weight_bytes"] == pytest.approx(weight_bits / 8)
    spike_maps, potentials = 6 * steps * 10 * 2, 6 * steps * out * 2 * ab  # ternary: 2 bits per spike slot
    assert bytes_moved(c, "spiking")["act_bytes"] == pytest.approx((spike_maps + potentials) / 8)
    assert bytes_moved(c, "quantized")["act_bytes"] == pytest.approx(6 * (10 * (2 + 1) + out * ab) / 8)
    assert sparse_macs(c) == pytest.approx(nonzero * out)


def test_comparator_bits_brute_force():
    for steps in range(1, 40):
        levels = min(b for b in range(1, 10) if 2**b >= steps + 1)  # bits to count 0..T
        for code in ("binary", "ternary"):
            assert comparator_bits(LinearCost("l", 1, 1, steps=steps, coding=code)) == levels
        assert comparator_bits(LinearCost("l", 1, 1, steps=steps, coding="bitwise")) == steps
    assert comparator_bits(LinearCost("l", 1, 1, steps=3)) == 2  # Yan et al.: T = 3 ↔ 2-bit activations


@pytest.mark.parametrize("code", coding.CODINGS)
def test_sops_from_spike_stats_match_exact_count(code):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 32, generator=g)
    s, _ = coding.encode(x.relu() if code == "binary" else x)
    st = coding.spike_stats(s, code)
    c = LinearCost(
        "l", 32, 24, tokens=16, input_density=1 - st["zero_frac"], firing_rate=st["firing_rate"],
        steps=st["steps"], coding=code,
    )
    assert sops(c) == pytest.approx(int(coding.spike_counts(s, code).sum()) * 24, rel=1e-12)  # spikes × fan-out


def test_memory_flips_spiking_vs_fp16_dense():
    # Spiking with fp32 weights beats an fp16 dense layer on compute (ACs at 0.9 pJ vs MACs at 1.5 pJ), but
    # reading twice the weight bytes from DRAM each token costs ~400× more than either compute term.
    spiking = LinearCost("w", 4096, 4096, firing_rate=0.3, steps=3)
    dense16 = LinearCost("w", 4096, 4096, weight_bits=16, act_bits=16)
    e_spk, e_d16 = energy(spiking, "spiking", FP32), energy(dense16, "dense", FP16)
    assert e_spk["compute_pJ"] < e_d16["compute_pJ"]
    assert e_spk["total_pJ"] > e_d16["total_pJ"]
    assert e_spk["total_pJ"] / e_d16["total_pJ"] == pytest.approx(2.0, rel=0.01)


def test_memory_shrinks_the_spiking_gain_at_equal_precision():
    c = LinearCost("w", 4096, 4096, firing_rate=0.3, steps=3)
    dense, spk = energy(c, "dense", FP32), energy(c, "spiking", FP32)
    assert dense["compute_pJ"] / spk["compute_pJ"] == pytest.approx(4.6 / (0.9 * 0.9))  # 5.7× on compute
    assert 1.0 < dense["total_pJ"] / spk["total_pJ"] < 1.01  # < 1 % once weights are read


def test_membrane_traffic_flips_spiking_vs_quantized():
    # A narrow-input, wide-output layer: spiking saves (2 − 3·0.4)·64·4096 ACs against the 2-bit comparator,
    # but re-reading and re-writing 4096 fp32 output potentials at each of the 3 steps costs more.
    c = LinearCost("narrow", 64, 4096, firing_rate=0.4, steps=3)
    verdict = spiking_wins(cost_table([c], FP32)).set_index("name").loc["narrow"]
    assert verdict["wins_on_compute"] and not verdict["wins_on_total"]
    saved = (2 - 3 * 0.4) * 64 * 4096 * FP32.ac_pJ
    extra = (bytes_moved(c, "spiking")["act_bytes"] - bytes_moved(c, "quantized")["act_bytes"]) * FP32.act_pJ_per_byte
    assert verdict["quantized_compute_uJ"] - verdict["spiking_compute_uJ"] == pytest.approx(saved / 1e6)
    assert extra > saved


def test_cost_table_and_totals():
    costs = [
        LinearCost("a", 64, 32, tokens=5, input_density=0.5, firing_rate=0.1, steps=3),
        LinearCost("b", 32, 64, tokens=5, input_density=0.9, firing_rate=0.6, steps=3),
    ]
    table = cost_table(costs, FP32)
    assert list(table.columns) == [
        "name", "method", "constants", "macs", "sops", "weight_bytes", "act_bytes", "bytes",
        "energy_compute_uJ", "energy_memory_uJ", "energy_total_uJ",
    ]
    assert len(table) == 3 * len(COST_METHODS)
    layers, totals = table[table.name != "total"], table[table.name == "total"].set_index("method")
    for col in ("macs", "sops", "bytes", "energy_total_uJ"):
        pd.testing.assert_series_equal(layers.groupby("method")[col].sum(), totals[col].sort_index(), check_names=False)
    for c in costs:
        for method in COST_METHODS:
            row = table[(table.name == c.name) & (table.method == method)].iloc[0]
            e = energy(c, method, FP32)
            assert row.energy_total_uJ == pytest.approx(e["total_pJ"] / 1e6)
            assert row.energy_total_uJ == pytest.approx(row.energy_compute_uJ + row.energy_memory_uJ)
    wins = spiking_wins(table).set_index("name")
    assert list(wins.index) == ["a", "b", "total"]
    assert wins.loc["a", "wins_on_compute"] and not wins.loc["b", "wins_on_compute"]  # 0.1·3 < 2·0.5; 0.6·3 > 2·0.9


def test_bad_input_raises():
    for bad in (
        lambda: LinearCost("l", 0, 4),
        lambda: LinearCost("l", 4, 4, steps=0),
        lambda: LinearCost("l", 4, 4, input_density=1.5),
        lambda: LinearCost("l", 4, 4, input_density=0.2, firing_rate=0.3),
        lambda: LinearCost("l", 4, 4, coding="unary"),
        lambda: sops(LinearCost("l", 4, 4)),
        lambda: energy(LinearCost("l", 4, 4), "analog"),
        lambda: cost_table([LinearCost("l", 4, 4)]),  # spiking needs a firing rate
        lambda: cost_table([LinearCost("l", 4, 4), LinearCost("l", 4, 4)], methods=("dense",)),
        lambda: cost_table([], methods=("dense",)),
        lambda: spiking_wins(cost_table([LinearCost("l", 4, 4)], methods=("dense",))),
        lambda: EnergyConstants.preset("fp8"),
    ):
        with pytest.raises(UserError):
            bad()

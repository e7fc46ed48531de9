"""`compare`'s bytes, ops and energy per token on a tiny Llama against a hand count of its seven block linears."""

import pytest

from sparsescope.harvest.compare import CompareConfig, compare
from tiny import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 6
# (in, out) of q, k, v, o, gate, up, down in each of 2 layers: hidden 32, 4 heads of 8, 2 kv heads, MLP 64
SHAPES = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)] * 2
MACS = sum(i * o for i, o in SHAPES)
ACTS = sum(i + o for i, o in SHAPES)
DRAM, SRAM = 162.5, 2.5  # pJ per byte (Horowitz 2014), weights and activations


def test_dense_quant_and_teal_rows_equal_a_hand_count():
    cfg = CompareConfig(eval_tokens=64, seq_len=32, calib_tokens=128, group_size=16, teal=(0.5,), spike_k=(3,),
                        compositions=False)
    t = compare(tiny_model("llama"), TEXT, TEXT, cfg).set_index("config")
    fp32 = t.loc["fp32"]
    assert fp32.macs_per_token == MACS and fp32.ops_per_token == MACS and fp32.sops_per_token == 0
    assert fp32.weight_bytes_per_token == 4 * MACS and fp32.act_bytes_per_token == 4 * ACTS
    assert fp32.energy_uJ_per_token == pytest.approx((4.6 * MACS + DRAM * 4 * MACS + SRAM * 4 * ACTS) / 1e6)
    fp16 = t.loc["fp16"]
    assert fp16.weight_bytes_per_token == 2 * MACS and fp16.bits_per_weight == 16
    assert fp16.energy_uJ_per_token == pytest.approx((1.5 * MACS + DRAM * 2 * MACS + SRAM * 2 * ACTS) / 1e6)
    int8 = t.loc["int8 per-channel"]  # 8-bit codes + one 16-bit scale per output row
    assert int8.weight_bytes_per_token == pytest.approx(sum(i * o * (8 + 16 / i) / 8 for i, o in SHAPES))
    assert int8.bits_per_weight == pytest.approx(sum(i * o * (8 + 16 / i) for i, o in SHAPES) / MACS)
    g16 = t.loc["int4 group 16"]  # 4-bit codes + one 16-bit scale per 16 inputs
    assert g16.bits_per_weight == pytest.approx(4 + 16 / 16)
    teal = t.loc["50%"]  # skipped inputs skip their weight columns and their multiply-accumulates
    d = teal.input_density
    assert 0 < d < 1 and teal.macs_per_token == pytest.approx(d * MACS)
    assert teal.weight_bytes_per_token == pytest.approx(4 * teal.macs_per_token)  # Σ d_l·4·in·out, d_l per linear
    spike = t[t.method == "spiking"].iloc[0]
    assert spike.macs_per_token == 0 and spike.sops_per_token > 0 and spike.ops_per_token == spike.sops_per_token

"""Integer spike coding: reference values for Gaussian input, exact round trips, brute-force spike and SOP counts."""

import math

import pytest
import torch

from sparsescope.errors import UserError
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


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.fixture(scope="module")
def gaussian() -> torch.Tensor:
    return torch.randn(4096, 256, generator=torch.Generator().manual_seed(0))


def _random_s(coding: str, shape=(5, 7), high=40, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = 0 if coding == "binary" else -high
    return torch.randint(low, high + 1, shape, generator=g, dtype=torch.int32)


def _brute_count(v: int, coding: str) -> int:
    return bin(abs(v)).count("1") if coding == "bitwise" else abs(v)


def test_gaussian_reference_values(gaussian):
    # closed form for x ~ N(0,1): v_th = E|x|/3 = sqrt(2/pi)/3; s = 0 iff |x| < v_th/2; |s| <= 7 iff |x| < 7.5 v_th
    v_th = math.sqrt(2 / math.pi) / 3
    p_zero, p_le7 = 2 * _phi(v_th / 2) - 1, 2 * _phi(7.5 * v_th) - 1
    assert p_zero == pytest.approx(0.106, abs=5e-4) and p_le7 == pytest.approx(0.954, abs=5e-4)
    s, _ = encode(gaussian, k=3)
    stats = spike_stats(s, "ternary")
    assert float((s == 0).double().mean()) == pytest.approx(p_zero, abs=0.005)
    assert float((s.abs() <= 7).double().mean()) == pytest.approx(p_le7, abs=0.005)
    assert stats["zero_frac"] == pytest.approx(p_zero, abs=0.005)
    assert stats["abs_le_7"] == pytest.approx(p_le7, abs=0.005)


def test_sparsity_falls_as_k_grows(gaussian):
    ks = [2, 2.5, 3, 3.5, 4]
    codes = [encode(gaussian, k)[0] for k in ks]
    steps = max(steps_needed(s, "ternary") for s in codes)  # one step budget, so the rates are comparable
    stats = [spike_stats(s, "ternary", steps=steps) for s in codes]
    zero = [st["zero_frac"] for st in stats]
    sparsity = [st["spike_sparsity"] for st in stats]
    assert all(a > b for a, b in zip(zero, zero[1:]))
    assert all(a > b for a, b in zip(sparsity, sparsity[1:]))


def test_encode_decode_exact_on_grid():
    # mean|s0| = k = 3 and a power-of-two scale make every float op exact, so v_th = v and s = s0 exactly
    s0 = torch.tensor([[3, -5, 0, 4], [-3, -3, -3, 3]], dtype=torch.int32)
    for v in (0.25, 2.0, 2.0**-10):
        x = s0.double() * v
        s, v_th = encode(x, k=3)
        assert torch.equal(s, s0)
        assert torch.equal(v_th, torch.full((2, 1), v, dtype=torch.float64))
        assert torch.equal(decode(s, v_th), x)


def test_encode_error_within_half_a_step(gaussian):
    s, v_th = encode(gaussian, k=3)
    assert s.dtype == torch.int32 and v_th.shape == (4096, 1)
    assert torch.allclose(v_th, gaussian.abs().mean(-1, keepdim=True) / 3)
    assert bool(((decode(s, v_th) - gaussian).abs() <= v_th / 2 * (1 + 1e-5)).all())


def test_zero_token_has_no_nan():
    x = torch.zeros(3, 8)
    x[1] = torch.linspace(-1, 1, 8)
    s, v_th = encode(x)
    assert v_th[0].item() == 0 and v_th[2].item() == 0
    assert torch.equal(s[0], torch.zeros(8, dtype=torch.int32))
    assert not torch.isnan(decode(s, v_th)).any()
    assert torch.equal(decode(s, v_th)[0], torch.zeros(8))


@pytest.mark.parametrize("coding", CODINGS)
def test_expand_collapse_round_trip(coding):
    for seed in range(5):
        s = _random_s(coding, shape=(3, 4, 6), high=70, seed=seed)
        spikes = expand(s, coding)
        assert spikes.dtype == torch.int8 and spikes.shape == (steps_needed(s, coding), 3, 4, 6)
        assert torch.equal(collapse(spikes, coding), s)
        longer = expand(s, coding, steps=spikes.shape[0] + 3)  # spare steps stay silent
        assert torch.equal(collapse(longer, coding), s) and not longer[spikes.shape[0] :].any()


def test_steps_needed_brute_force():
    s = torch.tensor([0, 3, -9, 17], dtype=torch.int32)
    assert steps_needed(s.abs(), "binary") == 17
    assert steps_needed(s, "ternary") == 17
    assert steps_needed(s, "bitwise") == min(t for t in range(1, 64) if 2**t - 1 >= 17)  # 5
    assert steps_needed(torch.zeros(4, dtype=torch.int32), "ternary") == 1
    assert [max_level(c, 3) for c in CODINGS] == [3, 3, 7]


def test_bitwise_reference_values():
    five = torch.tensor([5, -5], dtype=torch.int32)
    assert expand(five, "bitwise").T.tolist() == [[1, 0, 1], [-1, 0, -1]]  # LSB first, sign on each spike
    assert expand(torch.tensor([255], dtype=torch.int32), "bitwise").shape[0] == 8
    assert expand(torch.tensor([256], dtype=torch.int32), "bitwise").shape[0] == 9
    assert expand(torch.tensor([3], dtype=torch.int32), "ternary")[:, 0].tolist() == [1, 1, 1]


@pytest.mark.parametrize("coding", CODINGS)
def test_counts_brute_force(coding):
    s = _random_s(coding, shape=(4, 5), high=20, seed=1)
    per_entry = [[_brute_count(int(v), coding) for v in row] for row in s.tolist()]
    assert spike_counts(s, coding).tolist() == per_entry
    assert int((expand(s, coding) != 0).sum()) == sum(map(sum, per_entry))


@pytest.mark.parametrize("coding", CODINGS)
def test_spike_stats_against_expansion(coding):
    s = _random_s(coding, shape=(6, 5), high=9, seed=2)
    s[:, 1] = 0  # a silent channel
    s[2, 3] = 0
    spikes = expand(s, coding, steps=steps_needed(s, coding) + 1)
    st = spike_stats(s, coding, steps=spikes.shape[0])
    n = s.numel()
    assert st["steps"] == spikes.shape[0] and st["n_tokens"] == 6 and st["n_channels"] == 5
    assert st["spikes"] == int((spikes != 0).sum())
    assert st["spike_sparsity"] == pytest.approx(float((spikes == 0).double().mean()), abs=1e-12)
    assert st["firing_rate"] == pytest.approx(st["spikes"] / (spikes.shape[0] * n), abs=1e-12)
    assert st["spikes_per_channel"] == pytest.approx(st["spikes"] / n, abs=1e-12)
    assert st["zero_frac"] == pytest.approx(sum(v == 0 for v in s.flatten().tolist()) / n)
    silent = [all(spikes[t, i, c] == 0 for t in range(spikes.shape[0]) for i in range(6)) for c in range(5)]
    assert st["silent_channels"] == pytest.approx(sum(silent) / 5)
    assert st["abs_le_7"] == pytest.approx(sum(abs(v) <= 7 for v in s.flatten().tolist()) / n)


def test_clamp_bounds_latency():
    s = torch.tensor([[-300, -7, 0, 8, 255]], dtype=torch.int32)
    assert clamp(s, "bitwise", 3).tolist() == [[-7, -7, 0, 7, 7]]
    assert clamp(s, "ternary", 4).tolist() == [[-4, -4, 0, 4, 4]]
    assert clamp(s, "binary", 4).tolist() == [[0, 0, 0, 4, 4]]
    with pytest.raises(UserError, match="clamp"):
        expand(s, "bitwise", steps=3)
    assert expand(clamp(s, "bitwise", 3), "bitwise", steps=3).shape == (3, 1, 5)


@pytest.mark.parametrize("coding", ["ternary", "bitwise"])
def test_wta_keeps_largest_per_step(coding):
    g = torch.Generator().manual_seed(3)
    mags = torch.stack([torch.randperm(12, generator=g)[:8] + 1 for _ in range(4)])  # distinct |s| per token
    s = (mags * torch.where(torch.rand(4, 8, generator=g) < 0.5, -1, 1)).to(torch.int32)
    full, kept = expand(s, coding), expand(s, coding, wta=3)
    for t in range(full.shape[0]):
        for i in range(4):
            firing = [c for c in range(8) if full[t, i, c] != 0]
            winners = sorted(firing, key=lambda c: -abs(int(s[i, c])))[:3]
            assert [c for c in range(8) if kept[t, i, c] != 0] == sorted(winners)
            assert all(kept[t, i, c] == full[t, i, c] for c in winners)
    assert torch.equal(expand(s, coding, wta=8), full)
    lossy = collapse(kept, coding)
    assert bool((lossy.abs() <= s.abs()).all()) and bool((lossy * s >= 0).all())


def test_bad_input_raises():
    x = torch.randn(2, 4)
    s = torch.tensor([[1, -2]], dtype=torch.int32)
    for bad in (
        lambda: encode(x, k=0),
        lambda: encode(x, k=-1),
        lambda: encode(torch.ones(2, 3, dtype=torch.int64)),
        lambda: expand(s, "unary"),
        lambda: expand(s, "ternary", steps=0),
        lambda: expand(s, "binary"),
        lambda: expand(s.float(), "ternary"),
        lambda: expand(s, "ternary", wta=0),
        lambda: collapse(torch.tensor([[-1, 1]], dtype=torch.int8), "binary"),
        lambda: collapse(torch.tensor([[2, 1]], dtype=torch.int8), "ternary"),
        lambda: clamp(s, "bitwise", 0),
        lambda: spike_stats(torch.tensor(3, dtype=torch.int32), "ternary"),
    ):
        with pytest.raises(UserError):
            bad()


def test_half_precision_is_promoted():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    s16, v16 = encode(x.to(torch.bfloat16))
    s32, v32 = encode(x.to(torch.bfloat16).float())
    assert v16.dtype == torch.float32 and torch.equal(s16, s32) and torch.equal(v16, v32)

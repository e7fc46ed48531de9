"""IF/LIF rate coding against closed forms and a plain-Python membrane loop; percentile calibration vs a numpy sort."""

import math

import numpy as np
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.spiking.neurons import calibrate_threshold, rate_decode, rate_encode


def _away_from_boundaries(values: np.ndarray, margin: float = 1e-6) -> np.ndarray:
    return np.abs(values - np.round(values)) > margin


def test_if_soft_reset_dyadic_grid_is_exact():
    # x = v_th·m/64 and v_th = 3/4 are dyadic: every membrane update is exact, boundaries included
    steps, v_th = 64, 0.75
    m = torch.arange(-10, 100, dtype=torch.float64)
    x = v_th * m / 64
    n = rate_encode(x, v_th, steps).sum(0)
    expected = torch.tensor([min(steps, max(0, math.floor(mi * steps / 64))) for mi in m.tolist()])
    assert torch.equal(n, expected.double())


def test_if_soft_reset_closed_form_random():
    steps, v_th = 10, 1.3
    x = torch.empty(4000, dtype=torch.float64).uniform_(-0.5, 1.6, generator=torch.Generator().manual_seed(0))
    ok = _away_from_boundaries(x.numpy() * steps / v_th)
    x = x[torch.from_numpy(ok)]
    spikes = rate_encode(x, v_th, steps)
    expected = np.clip(np.floor(x.numpy() * steps / v_th), 0, steps)
    assert np.array_equal(spikes.sum(0).numpy(), expected)
    decoded = rate_decode(spikes, v_th).numpy()
    assert np.allclose(decoded, expected / steps * v_th)
    inside = (x.numpy() >= 0) & (x.numpy() <= v_th)
    err = x.numpy()[inside] - decoded[inside]  # always rounds down, by less than one level
    assert err.min() >= -1e-12 and err.max() < v_th / steps


def test_if_hard_reset_fires_every_ceil_steps():
    steps, v_th = 20, 1.0
    x = torch.empty(3000, dtype=torch.float64).uniform_(0.01, 1.5, generator=torch.Generator().manual_seed(1))
    x = x[torch.from_numpy(_away_from_boundaries(v_th / x.numpy()))]
    n = rate_encode(x, v_th, steps, reset="hard").sum(0).numpy()
    assert np.array_equal(n, np.floor(steps / np.ceil(v_th / x.numpy())))
    assert rate_decode(rate_encode(torch.tensor([0.6]), 1.0, 40, reset="hard"), 1.0).item() == pytest.approx(0.5)


def test_lif_hard_reset_closed_form():
    steps, v_th, tau = 30, 1.0, 2.0
    x = torch.empty(3000, dtype=torch.float64).uniform_(0.0, 4.0, generator=torch.Generator().manual_seed(2))
    xn = x.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        period = np.log(1 - v_th / xn) / np.log(1 - 1 / tau)  # first t with x·(1 − (1 − 1/τ)^t) ≥ v_th
    keep = (xn <= v_th - 1e-6) | ((xn > v_th + 1e-6) & _away_from_boundaries(period))
    x, xn, period = x[torch.from_numpy(keep)], xn[keep], period[keep]
    expected = np.where(xn > v_th, np.floor(steps / np.ceil(np.nan_to_num(period, nan=1.0))), 0)
    n = rate_encode(x, v_th, steps, neuron="lif", reset="hard", tau=tau).sum(0).numpy()
    assert np.array_equal(n, expected)
    assert n[xn < v_th].sum() == 0


def test_lif_soft_reset_matches_python_loop():
    steps, v_th, tau = 12, 0.8, 3.0
    xs = [-0.3, 0.0, 0.5, 0.79, 0.81, 1.2, 2.5, 7.0]
    spikes = rate_encode(torch.tensor(xs, dtype=torch.float64), v_th, steps, neuron="lif", tau=tau)
    for j, x in enumerate(xs):
        v, train = 0.0, []
        for _ in range(steps):
            v = v + (x - v) / tau
            fired = v >= v_th
            v -= v_th if fired else 0.0
            train.append(float(fired))
        assert spikes[:, j].tolist() == train


def test_per_channel_threshold_broadcasts():
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(4))
    v_th = torch.tensor([0.2, 0.5, 1.0])
    spikes = rate_encode(x, v_th, 8)
    assert spikes.shape == (8, 5, 3)
    for c in range(3):
        assert torch.equal(spikes[:, :, c], rate_encode(x[:, c], float(v_th[c]), 8))
    assert torch.allclose(rate_decode(spikes, v_th), v_th * spikes.sum(0) / 8)


def test_calibrate_threshold_is_the_order_statistic_of_numpy_sort():
    g = torch.Generator().manual_seed(5)
    for n in (1, 2, 7, 1001, 20000):
        samples = torch.rand(n, generator=g) + 0.01
        for p in (50, 99, 99.9, 100):
            expected = float(np.sort(samples.numpy())[min(round(p / 100 * n), n - 1)])  # round(q·n) values below it
            assert calibrate_threshold(samples, p) == expected
            assert (samples.numpy() < expected).sum() == min(round(p / 100 * n), n - 1)
    uniform = torch.rand(400, 500, generator=g)
    assert calibrate_threshold(uniform) == pytest.approx(0.999, abs=1e-3)  # the 99.9 % quantile of U(0, 1)


def test_bad_input_raises():
    x = torch.rand(4)
    for bad in (
        lambda: rate_encode(x, 1.0, 4, neuron="izhikevich"),
        lambda: rate_encode(x, 1.0, 4, reset="none"),
        lambda: rate_encode(x, 1.0, 0),
        lambda: rate_encode(x, 1.0, 4, neuron="lif", tau=0.5),
        lambda: rate_encode(x, 0.0, 4),
        lambda: rate_encode(x, torch.tensor([1.0, -1.0, 1.0, 1.0]), 4),
        lambda: calibrate_threshold(x, 0),
        lambda: calibrate_threshold(x, 101),
        lambda: calibrate_threshold(torch.empty(0)),
        lambda: calibrate_threshold(-x - 1),
    ):
        with pytest.raises(UserError):
            bad()

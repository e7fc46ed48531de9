"""Every activation metric against an independent float64 numpy recomputation, row by row."""

import math

import numpy as np
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.record.metrics import Metric, default_metrics, delta_frac, parse_metrics, token_metrics


def reference(x: np.ndarray, m: Metric) -> float:
    """One row, plain numpy, float64, brute force where it is clearer."""
    x = x.astype(np.float64)
    a, n = np.abs(x), len(x)
    rms = math.sqrt((x**2).mean())
    if m.name == "zero_frac":
        return float((x == 0).mean())
    if m.name == "near_zero_frac":
        return float((a <= m.threshold * rms).mean())
    if m.name == "hoyer":
        return (math.sqrt(n) - a.sum() / math.sqrt((x**2).sum())) / (math.sqrt(n) - 1)
    energy = np.sort(x**2)[::-1]
    total = energy.sum()
    if m.name == "mass_density":
        for k in range(n + 1):  # fewest largest channels holding share p of the energy
            if energy[:k].sum() >= m.threshold * total:
                return k / n
    if m.name == "teal_sparsity":
        best = 0
        for k in range(n + 1):  # zero the k smallest; relative L2 error must stay ≤ e
            if math.sqrt(energy[n - k:].sum() / total) <= m.threshold:
                best = k
        return best / n
    raise AssertionError(m)


@pytest.mark.parametrize("dist", ["normal", "laplace", "relu", "sparse"])
def test_static_metrics_match_numpy(dist):
    rng = np.random.default_rng(0)
    x = {"normal": rng.normal(size=(40, 97)), "laplace": rng.laplace(size=(40, 97)),
         "relu": np.maximum(rng.normal(size=(40, 97)), 0),
         "sparse": rng.normal(size=(40, 97)) * (rng.random((40, 97)) < 0.1)}[dist].astype(np.float32)
    metrics = [m for m in default_metrics() if m.name != "delta_frac"]
    got = token_metrics(torch.from_numpy(x), metrics).numpy()
    want = np.array([[reference(row, m) for m in metrics] for row in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_fast_path_without_sort_agrees_with_sorted_path():
    x = torch.randn(64, 200) * (torch.rand(64, 200) < 0.3)
    cheap = parse_metrics("zero_frac,near_zero_frac,hoyer")
    full = cheap + parse_metrics("teal_sparsity")
    assert torch.allclose(token_metrics(x, cheap), token_metrics(x, full)[:, : len(cheap)])


def test_masked_rows_equal_unpadded_rows():
    metrics = [m for m in default_metrics() if m.name != "delta_frac"]
    rows = [torch.rand(k) for k in (3, 7, 12)]
    padded = torch.zeros(3, 12)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
        mask[i, : len(r)] = True
    got = token_metrics(padded, metrics, mask)
    for i, r in enumerate(rows):
        assert torch.allclose(got[i], token_metrics(r[None], metrics)[0], atol=1e-6)


def test_delta_frac_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 33)).astype(np.float32)
    x[:, 4] = x[:, 3]  # an unchanged token: every channel counts
    got = delta_frac(torch.from_numpy(x), [0.05, 0.5]).numpy()
    for b in range(2):
        for t in range(1, 9):
            rms = np.sqrt((x[b, t].astype(np.float64) ** 2).mean())
            for i, thr in enumerate([0.05, 0.5]):
                want = (np.abs(x[b, t] - x[b, t - 1]) <= thr * rms).mean()
                assert got[b, t, i] == pytest.approx(want, rel=1e-6)
    assert np.all(got[:, 4] == 1.0)


def test_known_distribution_values():
    """Gaussian closed forms: Hoyer of N(0,1) → (√n − √(2n/π))/(√n − 1); near-zero@t → erf(t/√2)."""
    x = torch.randn(8, 20000, generator=torch.Generator().manual_seed(0))
    got = token_metrics(x, [Metric("hoyer"), Metric("near_zero_frac", 0.25)]).mean(0)
    n = 20000
    assert got[0].item() == pytest.approx((math.sqrt(n) - math.sqrt(2 * n / math.pi)) / (math.sqrt(n) - 1), abs=3e-3)
    assert got[1].item() == pytest.approx(math.erf(0.25 / math.sqrt(2)), abs=3e-3)


def test_all_zero_row_conventions():
    v = token_metrics(torch.zeros(1, 8), parse_metrics("zero_frac,hoyer,mass_density,teal_sparsity@0.1"))[0]
    assert v.tolist() == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("spec, needle", [("bogus", "unknown metric"), ("hoyer@0.1", "takes no threshold"),
                                          ("near_zero_frac@x", "not a number"), ("near_zero_frac@-1", "must lie in"),
                                          ("", "no metrics")])
def test_bad_metric_names(spec, needle):
    with pytest.raises(UserError, match=needle):
        parse_metrics(spec)


"""Weight statistics, pruning, fake quantization and TEAL thresholds, checked against independent recomputations."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sparsescope.errors import UserError
from sparsescope.levers.prune import (
    global_magnitude_masks, magnitude_mask, nm_mask, random_mask, wanda_mask, wanda_score,
)
from sparsescope.levers.quant import bytes_per_param, quantize_activation, quantize_weight, ternary
from sparsescope.levers.teal import teal_threshold, threshold_input
from sparsescope.weights import nm_readiness, weight_stats, weight_table


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- stats ----------------------------------------------------------------------------------------------------


def test_near_zero_and_zero_shares_match_numpy():
    W = randn(16, 64)
    W[W.abs() < 0.02] = 0.0
    stats = weight_stats(W)
    A = W.double().numpy()
    rms = np.sqrt((A**2).mean(axis=1, keepdims=True))
    assert stats["zero_frac"] == pytest.approx((A == 0).mean())
    for t in (0.01, 0.05, 0.1, 0.25):
        assert stats[f"near_zero_frac@{t:g}"] == pytest.approx((np.abs(A) <= t * rms).mean())


def test_norm_spread_and_outlier_columns_match_numpy():
    W = randn(32, 40)
    W[:, [3, 17]] *= 10.0  # two outlier input channels
    stats = weight_stats(W)
    A = W.double().numpy()
    rows, cols = np.linalg.norm(A, axis=1), np.linalg.norm(A, axis=0)
    assert stats["row_norm_cv"] == pytest.approx(rows.std() / rows.mean())
    assert stats["row_norm_max_median"] == pytest.approx(rows.max() / np.median(rows))
    assert stats["col_norm_cv"] == pytest.approx(cols.std() / cols.mean())
    assert stats["col_norm_max_median"] == pytest.approx(cols.max() / np.median(cols))
    assert stats["outlier_cols@6"] == 2 == (cols > 6 * np.median(cols)).sum()
    assert stats["outlier_col_frac@6"] == pytest.approx(2 / 40)


def test_nm_readiness_equals_brute_force_over_the_six_patterns():
    W = randn(5, 12)
    A = W.double().numpy()
    for p, key in ((1, "nm24_kept_l1"), (2, "nm24_kept_l2")):
        mass = np.abs(A) ** p
        kept = 0.0
        for i in range(A.shape[0]):
            for g in range(0, A.shape[1], 4):
                kept += max(mass[i, g + a] + mass[i, g + b] for a, b in itertools.combinations(range(4), 2))
        assert weight_stats(W)[key] == pytest.approx(kept / mass.sum())
    assert all(math.isnan(x) for x in nm_readiness(randn(4, 10)))  # 10 inputs: no 2:4 pattern exists


def test_weight_table_is_tidy_and_carries_the_note():
    weights = [(0, "mlp.W_in", randn(8, 16)), (1, "attn.W_Q", randn(16, 16, seed=1))]
    df = weight_table(weights, note="weights dequantised from Q4_1 GGUF")
    assert list(df.columns) == ["layer", "site", "metric", "threshold", "value", "n_params"]
    assert df.attrs["note"] == "weights dequantised from Q4_1 GGUF"
    row = df[(df.layer == 1) & (df.metric == "near_zero_frac") & (df.threshold == 0.1)]
    assert row.value.item() == weight_stats(weights[1][2])["near_zero_frac@0.1"] and row.n_params.item() == 256
    assert df[df.metric == "zero_frac"].threshold.isna().all()
    assert len(df) == 2 * len(weight_stats(weights[0][2]))


# ---- pruning ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_magnitude_keeps_exactly_the_largest(sparsity):
    W = randn(10, 30)
    mask = magnitude_mask(W, sparsity)
    assert mask.dtype == torch.bool and mask.shape == W.shape
    assert mask.sum().item() == math.ceil(round((1 - sparsity) * W.numel(), 9))
    if sparsity > 0:
        assert W.abs()[mask].min() > W.abs()[~mask].max()


def test_magnitude_count_survives_float_noise_and_ties_are_deterministic():
    assert magnitude_mask(randn(2, 5), 0.7).sum().item() == 3  # (1 - 0.7) * 10 = 3.0000000000000004 in floats
    W = torch.tensor([[1.0, 2.0, 1.0, 2.0], [1.0, 1.0, 2.0, 1.0]])
    mask = magnitude_mask(W, 0.5)  # keep 4: the three 2s and the first 1 in flattened order
    assert mask.tolist() == [[True, True, False, True], [False, False, True, False]]
    assert torch.equal(mask, magnitude_mask(W.clone(), 0.5))


def test_global_magnitude_uses_one_threshold_across_layers():
    weights = {"a": randn(4, 8), "b": 0.1 * randn(6, 8, seed=1)}
    masks = global_magnitude_masks(weights, 0.5)
    kept = torch.cat([weights[k].abs()[masks[k]] for k in weights])
    dropped = torch.cat([weights[k].abs()[~masks[k]] for k in weights])
    assert kept.numel() == math.ceil(0.5 * 80) and kept.min() > dropped.max()
    assert masks["b"].float().mean() < masks["a"].float().mean()  # the small-weight layer loses more
    assert all(masks[k].shape == weights[k].shape for k in weights)


def test_wanda_equals_hand_computation():
    W = randn(3, 8)
    X = randn(20, 8, seed=1)
    act_norm = X.norm(dim=0)
    x = X.double().tolist()
    norms = [math.sqrt(sum(x[t][j] ** 2 for t in range(20))) for j in range(8)]
    expected = []
    k = math.ceil(0.5 * 8)
    for i in range(3):
        scores = [abs(W[i, j].item()) * norms[j] for j in range(8)]
        best = sorted(range(8), key=lambda j: -scores[j])[:k]
        expected.append([j in best for j in range(8)])
    assert wanda_mask(W, act_norm, 0.5).tolist() == expected
    assert torch.allclose(wanda_score(W, act_norm).double(), torch.tensor(norms) * W.double().abs())
    assert wanda_mask(W, act_norm, 0.5, per_output=False).sum().item() == 12


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_largest_per_group(n, m):
    W = randn(6, 32)
    for score in (W.abs(), wanda_score(W, randn(32, seed=2).abs())):
        mask = nm_mask(score, n, m)
        groups, gscore = mask.reshape(6, -1, m), score.reshape(6, -1, m)
        assert (groups.sum(-1) == n).all()
        kept_min = torch.where(groups, gscore, torch.inf).amin(-1)
        dropped_max = torch.where(groups, -torch.inf, gscore).amax(-1)
        assert (kept_min >= dropped_max).all()


def test_row_masks_break_ties_towards_lower_index():
    score = torch.randint(0, 3, (5, 16), generator=torch.Generator().manual_seed(0)).float()
    for mask, k, width in ((nm_mask(score), 2, 4), (wanda_mask(score, torch.ones(16), 0.75), 4, 16)):
        rows = score.reshape(-1, width).tolist()
        expected = [[j in sorted(range(width), key=lambda j: (-row[j], j))[:k] for j in range(width)] for row in rows]
        assert mask.reshape(-1, width).tolist() == expected


def test_random_mask_count_and_seed():
    W = randn(10, 20)
    mask = random_mask(W, 0.75, seed=3)
    assert mask.sum().item() == 50
    assert torch.equal(mask, random_mask(W, 0.75, seed=3)) and not torch.equal(mask, random_mask(W, 0.75, seed=4))


def test_masks_do_not_modify_w():
    W = randn(4, 8)
    before = W.clone()
    magnitude_mask(W, 0.5), wanda_mask(W, torch.ones(8), 0.5), nm_mask(W.abs()), random_mask(W, 0.5)
    quantize_weight(W, 4, "group", 4), ternary(W)
    assert torch.equal(W, before)


@pytest.mark.parametrize("call", [
    lambda W: magnitude_mask(W, 1.0),
    lambda W: magnitude_mask(W, -0.1),
    lambda W: random_mask(W, 1.5),
    lambda W: wanda_mask(W, torch.ones(8), 1.0),
    lambda W: wanda_mask(W, torch.ones(7), 0.5),
    lambda W: global_magnitude_masks({"a": W}, 1.0),
    lambda W: nm_mask(W.abs(), 4, 4),
    lambda W: nm_mask(W.abs(), 0, 4),
    lambda W: magnitude_mask(W[0], 0.5),
    lambda W: teal_threshold(W, 1.0),
])
def test_bad_pruning_inputs_raise_user_error(call):
    with pytest.raises(UserError):
        call(randn(4, 8))


def test_nm_width_error_names_width_m_and_fix():
    with pytest.raises(UserError, match=r"in_features=10 .*M=4.*pad"):
        nm_mask(randn(2, 10).abs())


# ---- quantization -------------------------------------------------------------------------------------------------


def test_int8_per_channel_error_within_half_a_step():
    W = randn(16, 64)
    W[3] = 0.0  # an all-zero row must stay zero, not NaN
    Q = quantize_weight(W, 8)
    A = W.double().numpy()
    scale = np.abs(A).max(axis=1, keepdims=True) / 127
    assert Q.shape == W.shape and Q.dtype == W.dtype
    assert (np.abs(Q.double().numpy() - A) <= scale / 2 + 1e-6).all()
    codes = Q.double().numpy()[scale[:, 0] > 0] / scale[scale[:, 0] > 0]
    assert np.allclose(codes, np.round(codes), atol=1e-4) and np.abs(codes).max() <= 127 + 1e-4
    assert (Q[3] == 0).all()


def test_int4_group128_error_within_half_a_step():
    W = randn(4, 384)
    Q = quantize_weight(W, 4, granularity="group", group_size=128)
    A = W.double().numpy().reshape(4, 3, 128)
    scale = np.abs(A).max(axis=2, keepdims=True) / 7
    err = np.abs(Q.double().numpy().reshape(4, 3, 128) - A)
    assert (err <= scale / 2 + 1e-6).all()
    codes = np.round(Q.double().numpy().reshape(4, 3, 128) / scale)
    assert all(len(np.unique(codes[i, g])) <= 15 for i in range(4) for g in range(3)) and np.abs(codes).max() <= 7


def test_ternary_values_and_rounding():
    W = randn(8, 32)
    T = ternary(W)
    alpha = np.abs(W.double().numpy()).mean()
    values = np.unique(T.double().numpy())
    assert all(np.isclose(v, [-alpha, 0.0, alpha], rtol=1e-6).any() for v in values)
    expected = np.clip(np.round(W.double().numpy() / alpha), -1, 1) * alpha
    assert np.allclose(T.double().numpy(), expected, rtol=1e-6)
    assert (ternary(torch.zeros(2, 4)) == 0).all()


def test_activation_quantization_is_per_token():
    x = randn(2, 5, 16)
    x[0, 0] *= 100.0  # a loud token must not coarsen the others
    Q = quantize_activation(x)
    scale = np.abs(x.double().numpy()).max(axis=-1, keepdims=True) / 127
    assert Q.shape == x.shape and (np.abs(Q.double().numpy() - x.double().numpy()) <= scale / 2 + 1e-6).all()
    assert torch.equal(quantize_activation(x[1:2]), Q[1:2])


def test_bytes_per_param_closed_forms():
    assert bytes_per_param(8, "per_channel", in_features=576) == pytest.approx(1 + 2 / 576)
    assert bytes_per_param(4, "group", group_size=128) == pytest.approx(0.5 + 2 / 128)
    assert bytes_per_param(4, "group", group_size=32, scale_bits=32) == pytest.approx(0.5 + 4 / 32)


@pytest.mark.parametrize("call", [
    lambda W: quantize_weight(W, 3),
    lambda W: quantize_weight(W, 16),
    lambda W: quantize_weight(W, 4, "group", 5),
    lambda W: quantize_weight(W, 4, "per_tensor"),
    lambda W: quantize_activation(W, 2),
    lambda W: bytes_per_param(2, "group"),
    lambda W: bytes_per_param(8, "per_channel"),
])
def test_bad_quantization_inputs_raise_user_error(call):
    with pytest.raises(UserError):
        call(randn(4, 8))


def test_unsupported_bits_message_lists_supported():
    with pytest.raises(UserError, match=r"\[8, 4\]"):
        quantize_weight(randn(2, 4), 3)


# ---- TEAL thresholds ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_teal_threshold_realises_target_sparsity_on_held_out_samples(sparsity, dist):
    g = torch.Generator().manual_seed(0)

    def draw() -> torch.Tensor:
        if dist == "normal":
            return torch.randn(2000, 64, generator=g)
        sign = torch.randint(0, 2, (2000, 64), generator=g) * 2 - 1  # Laplace(0, 1): |x| ~ Exp(1)
        return torch.empty(2000, 64).exponential_(generator=g) * sign

    calib, held_out = draw(), draw()
    t = teal_threshold(calib, sparsity)
    assert (calib.abs() < t).float().mean().item() == pytest.approx(sparsity, abs=1e-5)
    assert (threshold_input(held_out, t) == 0).float().mean().item() == pytest.approx(sparsity, abs=0.01)
    expected_t = norm.ppf((1 + sparsity) / 2) if dist == "normal" else -math.log(1 - sparsity)
    assert t == pytest.approx(expected_t, rel=0.03)


def test_threshold_input_keeps_large_entries_unchanged():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.49, 0.5, 3.0]])
    assert threshold_input(x, 0.5).tolist() == [[-2.0, -0.5, 0.0, 0.0, 0.5, 3.0]]
    assert teal_threshold(x, 0.0) == 0.0

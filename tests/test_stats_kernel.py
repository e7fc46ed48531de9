"""The fused statistics kernel against the numpy reference, its pure-torch twin, and the recorder built on it."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from sparsescope.kernels import build
from sparsescope.kernels import stats as S
from sparsescope.probes import Prompt, Suite
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import default_metrics, stats_spec
from test_metrics import reference
from tiny import tiny_model

STATIC = [m for m in default_metrics() if m.name != "delta_frac"]
SPEC = stats_spec(default_metrics())
M, D = len(SPEC.kinds), len(SPEC.delta_t)
COUNT_COLS = [i for i, k in enumerate(SPEC.kinds) if k != S.HOYER] + list(range(M, SPEC.width))
HOYER_COL = SPEC.kinds.index(S.HOYER)

needs_kernel = pytest.mark.skipif(S.kernel() is None, reason="the stats kernel cannot be built here")


def rows(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """[24, n] float64 test rows of one kind."""
    r = torch.randn(24, n, generator=gen, dtype=torch.float64)
    if kind == "sparse":
        return r * (torch.rand(24, n, generator=gen, dtype=torch.float64) < 0.2)
    if kind == "ties":  # few distinct small integers: every energy sum is exact, ties everywhere
        return torch.randint(-3, 4, (24, n), generator=gen).double()
    if kind == "dynamic":  # ±inf-free, 1e-30 … 1e30 within a row
        return r * 10.0 ** torch.randint(-30, 31, (24, n), generator=gen).double()
    if kind == "edge":  # all-zero rows, single non-zeros, constant rows
        r[:6] = 0
        r[6:12] = 0
        r[6:12, torch.randint(n, (6,), generator=gen)] = torch.randn(6, generator=gen, dtype=torch.float64)
        r[12:18] = 0.1
        return r
    return r


def values(x: torch.Tensor, use_kernel: bool, mask=None, spec=SPEC, neurons=True):
    """site_values over x [B, T, n] (every token counted) plus the neuron accumulators."""
    owner = torch.zeros(x.shape[:2], dtype=torch.long)
    fire = torch.zeros(x.shape[-1], dtype=torch.float64) if neurons else None
    abs_sum = torch.zeros_like(fire) if neurons else None
    v = S.site_values(x[:, :, None], owner, spec, mask=mask, fire=fire, abs_sum=abs_sum, use_kernel=use_kernel)
    return v, fire, abs_sum


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Counts identical; Hoyer equal to float64 rounding (its L1 sum is reduced in a different order)."""
    assert torch.equal(a[..., COUNT_COLS], b[..., COUNT_COLS])
    torch.testing.assert_close(a[..., HOYER_COL], b[..., HOYER_COL], rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 97, 1536, 4099])
@pytest.mark.parametrize("kind", ["normal", "sparse", "ties", "dynamic", "edge"])
def test_kernel_equals_torch_path(kind, n, dtype):
    if kind == "dynamic" and dtype != torch.float64:
        pytest.skip("1e±30 is outside bfloat16/float32 squares' useful range")
    x = rows(kind, n, torch.Generator().manual_seed(n)).to(dtype).reshape(4, 6, n)
    k, kf, ka = values(x, True)
    t, tf, ta = values(x, False)
    assert_same(k, t)
    assert torch.equal(kf, tf)
    torch.testing.assert_close(ka, ta, rtol=1e-12, atol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 97, 4099])
@pytest.mark.parametrize("kind", ["normal", "sparse", "ties", "edge"])
def test_kernel_matches_numpy_reference(kind, n, dtype):
    if n > 1000 and (kind, dtype) != ("normal", torch.float32):
        pytest.skip("the brute-force reference is O(n²) per row: one wide case is enough")
    x = rows(kind, n, torch.Generator().manual_seed(7 * n)).to(dtype)
    if n > 1000:
        x = x[:2]
    got = values(x[None], True, neurons=False)[0][0]
    xs = x.double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, row in enumerate(xs):
            if not row.any():  # the documented all-zero conventions (the reference divides by zero)
                want = [1.0 if m.name in ("zero_frac", "near_zero_frac", "hoyer", "teal_sparsity") else 0.0
                        for m in STATIC]
            else:
                want = [reference(row, m) for m in STATIC]
            if n == 1:  # Hoyer of one entry is 0 by the clamped formula; the reference divides 0 by 0
                want[HOYER_COL] = 0.0
            np.testing.assert_allclose(got[i, :M].numpy(), want, rtol=1e-6, atol=1e-7, err_msg=f"row {i}")
    assert (got[:, M + D] == 1).all() and (got[:, M + D + 1] == 0).all()


def test_ties_count_one_by_one():
    """100 equal entries: the energy budget e²·‖x‖² fits exactly ⌊100·e²⌋ of them, whichever path."""
    x = torch.ones(1, 1, 100)
    for use in ([True, False] if S.kernel() is not None else [False]):
        v = values(x, use, spec=stats_spec([m for m in STATIC if m.name == "teal_sparsity"], delta=False),
                   neurons=False)[0][0, 0]
        assert v[0].item() == pytest.approx(0.01) and v[1].item() == pytest.approx(0.04)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_masks_and_head_groups(dtype):
    """Attention-like rows: ragged key masks shared by G heads; kernel = torch path = each row unpadded."""
    gen = torch.Generator().manual_seed(3)
    b, t, g, n = 2, 9, 3, 9
    x = torch.rand(b, t, g, n, generator=gen).to(dtype)
    x[0, 2, 1] = 0  # an all-zero head row
    mask = torch.ones(t, n, dtype=torch.bool).tril()[None].expand(b, t, n).clone()
    mask[1, :, 6:] = False  # a padded sequence
    owner = torch.where(mask.sum(-1) >= 2, 0, -1)
    spec = stats_spec(default_metrics(), delta=False)
    k = S.site_values(x, owner, spec, mask=mask, use_kernel=True)
    tp = S.site_values(x, owner, spec, mask=mask, use_kernel=False)
    assert torch.equal(k[..., [c for c in range(spec.width) if c != HOYER_COL]],
                       tp[..., [c for c in range(spec.width) if c != HOYER_COL]])
    torch.testing.assert_close(k[..., HOYER_COL], tp[..., HOYER_COL], rtol=1e-12, atol=1e-12)
    for bi in range(b):
        for ti in range(t):
            if owner[bi, ti] < 0:
                assert (k[bi, ti] == 0).all()
                continue
            valid = x[bi, ti][:, mask[bi, ti]].double().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                want = [np.mean([reference(r, m) if r.any() else {"hoyer": 1.0, "mass_density": 0.0}.get(m.name, 1.0)
                                 for r in valid]) for m in STATIC]
            np.testing.assert_allclose(k[bi, ti, :M].numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("use", [True, False])
def test_nan_rows_are_counted_not_propagated(use):
    if use and S.kernel() is None:
        pytest.skip("no kernel")
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    x[0, 2, 3] = math.nan
    x[1, 4, 0] = math.inf
    v, fire, abs_sum = values(x, use)
    bad = torch.zeros(2, 5, dtype=torch.bool)
    bad[0, 2] = bad[1, 4] = True
    assert torch.equal(v[..., M + D + 1].bool(), bad) and torch.equal(v[..., M + D].bool(), ~bad)
    assert torch.isfinite(v).all() and torch.isfinite(fire).all() and torch.isfinite(abs_sum).all()
    assert (v[bad][:, : M + D] == 0).all()
    assert v[0, 3, M + D + 2] == 0 and v[0, 2, M + D + 2] == 0 and v[0, 4, M + D + 2] == 1  # deltas touching NaN
    clean = values(x[:, :2], use)[0]  # tokens before the NaN are unaffected
    assert torch.equal(clean, v[:, :2])
    ok_abs = x.abs()[~bad].double().sum(0)
    torch.testing.assert_close(abs_sum, ok_abs, rtol=1e-12, atol=0)


TEXTS = ["the cat sat on the mat", "hello there", "a much longer prompt with many more characters in it!", "xyz 123"]


def suite():
    return Suite("s", "id", [Prompt(f"p{i}", t, "s", "id") for i, t in enumerate(TEXTS)], source="t", license="t")


def key(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("layer", "site", "metric", "threshold", "prompt_id", "index") if c in df]
    return df.sort_values(cols).reset_index(drop=True)


@needs_kernel
def test_scan_with_kernel_equals_scan_without(monkeypatch):
    """Every site of a tiny Llama (attention patterns included), all default metrics: the env switch
    SPARSESCOPE_NO_KERNELS=1 (pure torch) and the kernel give the same tables within 1e-6."""
    lm = tiny_model("llama")
    with_kernel = Recorder(lm, RecordConfig(batch_size=3, window=0)).record_suite(suite())
    monkeypatch.setenv("SPARSESCOPE_NO_KERNELS", "1")
    build.load.cache_clear()
    try:
        assert S.kernel() is None
        without = Recorder(lm, RecordConfig(batch_size=3, window=0)).record_suite(suite())
    finally:
        monkeypatch.delenv("SPARSESCOPE_NO_KERNELS")
        build.load.cache_clear()
    for table in ("activations", "prompts", "neurons"):
        pd.testing.assert_frame_equal(key(getattr(with_kernel, table)), key(getattr(without, table)),
                                      check_exact=False, rtol=1e-6, atol=1e-6)


def test_no_compiler_gives_one_notice_and_the_same_numbers(monkeypatch):
    lm = tiny_model("gpt2")
    want = Recorder(lm, RecordConfig(kernels=False, window=0)).record_suite(suite())
    monkeypatch.setattr(build, "_missing_tools", lambda: "no C++ compiler on PATH; install g++")
    build.load.cache_clear()
    try:
        with pytest.warns(UserWarning) as caught:
            assert S.kernel() is None
            got = Recorder(lm, RecordConfig(window=0)).record_suite(suite())
        notices = [str(w.message) for w in caught if "kernels unavailable" in str(w.message)]
        assert len(notices) == 1 and "\n" not in notices[0] and "install g++" in notices[0]
    finally:
        build.load.cache_clear()
    pd.testing.assert_frame_equal(got.prompts, want.prompts)


def test_recorder_reports_nan_sites():
    lm = tiny_model("llama")
    module, _, _ = lm.sites.hook(1, "mlp.hook_post")

    def poison(mod, args):  # NaN in the first token of every sequence at one site
        x = args[0].clone()
        x[:, 0, 0] = math.nan
        return (x,)

    handle = module.register_forward_pre_hook(poison)
    try:
        with pytest.warns(UserWarning, match="NaN/inf activations at 1 site"):
            run = Recorder(lm, RecordConfig(batch_size=2, window=0, sites=["mlp.hook_post", "hook_resid_pre"])).record_suite(
                suite())
    finally:
        handle.remove()
    acts = run.activations
    nf = acts[acts.metric == "nonfinite_frac"]
    assert list(zip(nf.layer, nf.site)) == [(1, "mlp.hook_post")]
    n_tokens = sum(len(t) for t in TEXTS)
    assert nf.value.item() == pytest.approx(len(TEXTS) / n_tokens) and nf.n_tokens.item() == n_tokens
    site = acts[(acts.layer == 1) & (acts.site == "mlp.hook_post") & (acts.metric != "nonfinite_frac")]
    assert site.value.notna().all()
    assert (site[site.metric == "hoyer"].n_tokens == n_tokens - len(TEXTS)).all()
    assert run.neurons.value.notna().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_torch_path_stays_on_cuda_and_matches_cpu():
    x = torch.randn(3, 17, 1, 300, generator=torch.Generator().manual_seed(1))
    owner = torch.zeros(3, 17, dtype=torch.long)
    fire = torch.zeros(300, dtype=torch.float64, device="cuda")
    abs_sum = torch.zeros_like(fire)
    got = S.site_values(x.cuda(), owner.cuda(), SPEC, fire=fire, abs_sum=abs_sum)
    assert got.device.type == "cuda" and fire.device.type == "cuda"
    want = S.site_values(x, owner, SPEC, use_kernel=False)
    assert_same(got.cpu(), want)


def numpy_logit_values(logits: np.ndarray, targets: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Next-token NLL and max-softmax per row in float64 numpy (the independent reference)."""
    x = logits.astype(np.float64)
    mx = x.max(-1)
    lse = mx + np.log(np.exp(x - mx[..., None]).sum(-1))
    nll = lse - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    ok = want & np.isfinite(x).all(-1)
    out = np.stack([nll, np.exp(mx - lse), np.ones_like(nll)], -1)
    return np.where(ok[..., None], np.nan_to_num(out), 0.0)


@pytest.mark.parametrize("use", [True, False])
@pytest.mark.parametrize("vocab", [1, 37, 4099])
def test_logit_values_match_numpy(use, vocab):
    if use and S.kernel() is None:
        pytest.skip("no kernel")
    gen = torch.Generator().manual_seed(vocab)
    big = torch.randn(3, 9, vocab + 3, generator=gen) * 6  # a strided view: rows not contiguous in memory
    logits = big[:, :, 2:-1]
    targets = torch.randint(vocab, (3, 9), generator=gen)
    want = torch.rand(3, 9, generator=gen) > 0.25
    logits[0, 1, 0] = float("nan")
    logits[1, 2, -1] = float("inf")
    logits[2, 3, 0] = -float("inf")
    want[0, 1] = want[1, 2] = want[2, 3] = True
    got = S.logit_values(logits, targets, want, use_kernel=use).numpy()
    ref = numpy_logit_values(logits.numpy(), targets.numpy(), want.numpy())
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    assert got[0, 1].tolist() == [0, 0, 0] and got[1, 2].tolist() == [0, 0, 0] and got[2, 3].tolist() == [0, 0, 0]


def test_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    import os
    import time

    lock = tmp_path / "lock"
    lock.touch()
    build._drop_stale_lock(tmp_path)  # a build in progress elsewhere: keep waiting on it
    assert lock.exists()
    old = time.time() - build.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="stale kernel build lock"):
        build._drop_stale_lock(tmp_path)
    assert not lock.exists()
    build._drop_stale_lock(tmp_path)  # no lock: nothing to do

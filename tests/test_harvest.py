"""Sparse GEMV kernels, the ``sparse`` lever, the lean decode loop and the harvest planner.

Kernel results are checked against numpy float64 on the weight the packing stands for (fp32 as is, bf16 rounded,
int8 codes × scales recomputed in numpy). Tolerance: fp32 accumulation of in_features products, so
|Δy| ≤ 1e-5 · Σ_j |x_j|·|W_oj| + 1e-6 (bf16 outputs: rounded to bf16, 1e-2 relative).
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsescope.errors import UserError
from sparsescope.kernels import build
from sparsescope.kernels import sparse as sp

TEXT = " ".join(["the quick brown fox jumps over the lazy dog near a quiet river bank, then sleeps."] * 24)


def _ref(w: np.ndarray, x: np.ndarray, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """(x @ w.T (+ bias) in float64, the error bound per output)."""
    y = x @ w.T + (0 if bias is None else bias)
    return y, 1e-5 * (np.abs(x) @ np.abs(w).T) + 1e-6


def _int8_numpy(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=1) / 127
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / safe[:, None]), -127, 127) * scale[:, None]


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("n_out", [37, 197])
def test_kernel_matches_float64(fmt, batch, sparsity, n_out):
    g = torch.Generator().manual_seed(batch)
    # odd shapes: not multiples of the 4-row unroll or the SIMD width; 197 outputs = three whole 64-byte int8 lines
    # (the AVX-512 int8 path at batch 1) and a 5-output tail (the generic loop)
    w = torch.randn(n_out, 53, generator=g)
    bias = torch.randn(n_out, generator=g)
    big = torch.randn(batch, 2 * 53, generator=g)
    x = big[:, ::2]  # non-contiguous input
    x[torch.rand(x.shape, generator=g) < sparsity] = 0.0
    packed = sp.pack(w, bias, fmt)
    wd = w.double().numpy() if fmt == "fp32" else _int8_numpy(w.double().numpy())
    y_ref, tol = _ref(wd, x.double().numpy(), bias.double().numpy())
    for threshold in (None, 0.0):
        for backend in ("auto", "torch"):
            y = sp.linear(packed, x, threshold, backend=backend)
            assert y.shape == (batch, n_out) and y.dtype == torch.float32
            assert np.all(np.abs(y.double().numpy() - y_ref) <= tol)


def test_threshold_matches_teal_rule_and_3d_input():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(20, 30, generator=g), torch.randn(2, 3, 30, generator=g)
    t = 0.7
    xt = np.where(np.abs(x.double().numpy()) < t, 0.0, x.double().numpy())  # TEAL: zero |x| < t, keep the rest
    y_ref, tol = _ref(w.double().numpy(), xt.reshape(6, 30))
    for backend in ("auto", "torch"):
        y = sp.linear(sp.pack(w), x, t, backend=backend)
        assert y.shape == (2, 3, 20)
        assert np.all(np.abs(y.reshape(6, 20).double().numpy() - y_ref) <= tol)


def test_bf16_weights_and_inputs():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(33, 65, generator=g), torch.randn(2, 65, generator=g).bfloat16()
    x[:, ::3] = 0
    y = sp.linear(sp.pack(w, fmt="bf16"), x, 0.0)
    assert y.dtype == torch.bfloat16
    y_ref = x.double().numpy() @ w.bfloat16().double().numpy().T
    assert np.allclose(y.double().numpy(), y_ref, rtol=1e-2, atol=1e-2)


def test_int8_equals_dequantise_then_matmul():
    from sparsescope.levers.quant import quantize_weight

    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(40, 24, generator=g), torch.randn(1, 24, generator=g)
    codes, scale = sp.quantize_int8(w)
    assert torch.equal(codes.float() * scale[:, None], quantize_weight(w, 8))  # the quant lever's weights exactly
    y = sp.linear(sp.pack(w, fmt="int8"), x)
    assert torch.allclose(y, x @ quantize_weight(w, 8).T, atol=1e-5, rtol=1e-5)


def test_spike_counts_kernel():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 45, generator=g)
    counts = torch.randint(-3, 4, (2, 45), generator=g, dtype=torch.int32)
    v_th = torch.tensor([0.25, 0.5])
    y_ref, tol = _ref(w.double().numpy(), counts.double().numpy() * v_th.double().numpy()[:, None])
    for backend in ("auto", "torch"):
        y = sp.spike_linear(sp.pack(w), counts, v_th, backend=backend)
        assert np.all(np.abs(y.double().numpy() - y_ref) <= tol)
    with pytest.raises(UserError, match="integer"):
        sp.spike_linear(sp.pack(w), counts.float(), v_th)


def test_bad_devices_and_shapes():
    w = torch.randn(8, 6)
    with pytest.raises(UserError, match="features"):
        sp.linear(sp.pack(w), torch.randn(1, 5))
    with pytest.raises(UserError, match="pack the weight"):
        sp.linear(sp.pack(w), torch.randn(1, 6, device="meta"))
    with pytest.raises(UserError, match="built for the CPU"):
        sp.linear(sp.pack(w.to("meta")), torch.randn(1, 6, device="meta"), backend="kernel")
    with pytest.raises(UserError, match="weight format"):
        sp.pack(w, fmt="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the torch path is checked on the CPU")
def test_cuda_runs_the_torch_path():
    w, x = torch.randn(30, 20), torch.randn(2, 20)
    y = sp.linear(sp.pack(w.cuda()), x.cuda(), 0.0)
    assert torch.allclose(y.cpu(), sp.linear(sp.pack(w), x, 0.0, backend="torch"), atol=1e-4)


def test_no_compiler_falls_back_with_a_notice(monkeypatch):
    w, x = torch.randn(9, 7), torch.randn(1, 7)
    expected = sp.linear(sp.pack(w), x, backend="torch")
    monkeypatch.setattr(build, "_missing_tools", lambda: "no C++ compiler on PATH; install g++")
    build.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
            assert sp.native() is None
        assert torch.equal(sp.linear(sp.pack(w), x), expected)
    finally:
        build.load.cache_clear()


# ---- the lever ----------------------------------------------------------------------------------------------

@pytest.fixture
def tiny():
    from tiny import tiny_model

    return tiny_model("llama")


@pytest.fixture
def calibration(tiny):
    from sparsescope.record.calibration import calibrate

    return calibrate(tiny, TEXT, seq_len=64, max_tokens=256)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_sparse_lever_equals_teal_and_quant_levers(tiny, calibration, weights):
    from sparsescope.intervene import Plan, Rule, apply

    ids = torch.tensor([tiny.tokenizer(TEXT[:60])["input_ids"]])
    levers = [Rule("teal", {"sparsity": 0.5})] + ([Rule("quant", {"bits": 8})] if weights == "int8" else [])
    with apply(tiny, Plan(levers), calibration):
        expected = tiny.forward(ids)
    with apply(tiny, Plan([Rule("sparse", {"sparsity": 0.5, "weights": weights})]), calibration):
        long = tiny.forward(ids)  # > KERNEL_ROWS tokens: the torch path
        short = torch.cat([tiny.forward(ids[:, : i + 1])[:, -1:] for i in range(4)], 1)  # the kernel path
    assert torch.allclose(long, expected, atol=1e-4)
    assert torch.allclose(short, expected[:, :4], atol=1e-4)


def test_sparse_lever_restores_bit_identical_and_round_trips_yaml(tiny, calibration, tmp_path):
    from sparsescope.intervene import Plan, Rule, apply

    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    modules = dict(tiny.model.named_modules())
    plan = Plan([Rule("sparse", {"sparsity": 0.7, "weights": "int8"}, layers=[1], sites=["mlp.W_out"]),
                 Rule("sparse", {"spike_k": 3.0}, layers=[0])])
    plan.to_yaml(tmp_path / "p.yaml")
    assert Plan.from_yaml(tmp_path / "p.yaml") == plan
    ids = torch.tensor([[5, 6, 7]])
    with apply(tiny, Plan.from_yaml(tmp_path / "p.yaml"), calibration):
        tiny.forward(ids)
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m is modules[n] for n, m in tiny.model.named_modules())
    with pytest.raises(UserError, match="calibration"):
        apply(tiny, Plan([Rule("sparse", {"sparsity": 0.5})]))
    with pytest.raises(UserError, match="weights"):
        apply(tiny, Plan([Rule("sparse", {"sparsity": 0.5, "weights": "int4"})]), calibration)


# ---- the lean decode loop ------------------------------------------------------------------------------------

needs_kernel = pytest.mark.skipif(sp.native() is None, reason="no C++ compiler: the fused loop cannot be built")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("loop,head_fmt", [("modules", "torch"), ("fused", "torch"), ("fused", "fp32")])
def test_lean_decoder_matches_hf_forward(arch, loop, head_fmt):
    from tiny import tiny_model

    from sparsescope.harvest.decode import LeanDecoder, head

    if loop == "fused" and sp.native() is None:
        pytest.skip("no C++ compiler: the fused loop cannot be built")
    lm = tiny_model(arch)
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with head(lm, head_fmt):
        decoder = LeanDecoder(lm, 32, fused=loop == "fused")
        assert decoder.fused == (loop == "fused")
        logits = torch.stack([decoder.step(int(t), p) for p, t in enumerate(ids[0])])
    assert torch.allclose(logits, lm.forward(ids)[0], atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_fused_loop_runs_the_plan_like_hf_forward_with_the_plan(tiny, calibration, weights):
    """The fused loop reads each ``sparse`` lever's threshold and packing: its logits equal HF's forward over the
    whole sequence with the same plan applied (torch path: thresholded input times the dequantised weight)."""
    from sparsescope.harvest.decode import LeanDecoder, head
    from sparsescope.intervene import Plan, Rule, apply

    ids = torch.randint(3, 100, (1, 10), generator=torch.Generator().manual_seed(1))
    plan = Plan([Rule("sparse", {"sparsity": 0.5, "weights": weights}, layers=[0]),
                 Rule("sparse", {"sparsity": 0.3}, layers=[1], sites=["mlp.W_out"])])
    with apply(tiny, plan, calibration), head(tiny, weights):
        decoder = LeanDecoder(tiny, 16)
        assert decoder.fused, decoder.why_not_fused
        logits = torch.stack([decoder.step(int(t), p) for p, t in enumerate(ids[0])])
        reference = tiny.forward(ids)[0]
    assert torch.allclose(logits, reference, atol=1e-4)
    assert not torch.allclose(logits, tiny.forward(ids)[0], atol=1e-3)  # the plan changed something


@needs_kernel
def test_fused_loop_profile_and_fallback(tiny, calibration):
    import time

    from sparsescope.harvest.decode import SLOTS, LeanDecoder
    from sparsescope.intervene import Plan, Rule, apply

    decoder = LeanDecoder(tiny, 8)
    decoder.profile = "wall"
    start = time.perf_counter()
    decoder.step(5, 0)
    elapsed = time.perf_counter() - start
    prof = decoder.take_profile()
    assert set(prof) == {f"{i}.{s}" for i in range(2) for s in SLOTS} | {"norm", "head"}
    assert all(v >= 0 for v in prof.values()) and 0 < sum(prof.values()) <= elapsed
    assert prof["head"] == 0  # the torch head runs in Python, outside the profile
    assert sum(decoder.take_profile().values()) == 0  # taking zeroes the counters
    ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(2))
    with apply(tiny, Plan([Rule("quant", {"bits": 4})])):  # a weight lever rewrites the weight: fused runs it
        quantized = LeanDecoder(tiny, 8)
        assert quantized.fused
        logits = torch.stack([quantized.step(int(t), p) for p, t in enumerate(ids[0])])
        assert torch.allclose(logits, tiny.forward(ids)[0], atol=1e-5)
    with apply(tiny, Plan([Rule("teal", {"sparsity": 0.5})]), calibration):  # an input lever: modules loop only
        fallback = LeanDecoder(tiny, 8)
        assert not fallback.fused and "lever" in fallback.why_not_fused
        with pytest.raises(UserError, match="fused"):
            LeanDecoder(tiny, 8, fused=True)
        with pytest.raises(UserError, match="fused loop"):
            fallback.take_profile()


def test_lean_decoder_greedy_equals_hf_generate_and_refuses_gpt2(tiny):
    from tiny import tiny_model

    from sparsescope.harvest.decode import LeanDecoder, head, hf_generate

    prompt = tiny.tokenizer("the quick")["input_ids"]
    ours, _ = LeanDecoder(tiny, 32).generate(prompt, 8)
    assert ours == hf_generate(tiny, prompt, 8)[0]
    with head(tiny, "int8"):
        assert type(tiny.model.get_output_embeddings()).__name__ == "PackedHead"
    assert isinstance(tiny.model.get_output_embeddings(), torch.nn.Linear)
    with pytest.raises(UserError, match="Llama-like"):
        LeanDecoder(tiny_model("gpt2"))


# ---- the planner ---------------------------------------------------------------------------------------------

def _bytes_times(lm):
    """Deterministic timings (seconds ∝ bytes read) so the planner test does not depend on machine load."""
    from sparsescope.harvest.planner import HEAD, linear_shapes
    from sparsescope.kernels.timing import TORCH_DENSE

    shapes = [*linear_shapes(lm).values(), tuple(lm.model.get_output_embeddings().weight.shape[::-1])]
    cases = [TORCH_DENSE] + [("ours", f, s) for f in ("fp32", "int8") for s in (0.0, 0.3, 0.5, 0.7)]
    assert HEAD == "lm_head"
    return {sh: {c: sh[0] * sh[1] * (1 - c[2]) * (1 if c[1] == "int8" else 4) * 1e-9 * (1.2 if c[0] == "torch"
                                                                                          else 1) for c in cases}
            for sh in shapes}


@pytest.mark.parametrize("budget,pricing", [(0.0, "bytes"), (0.003, "bytes"), (0.0, "loop"), (0.003, "loop")])
def test_planner_respects_budget(tiny, budget, pricing):
    from sparsescope.eval import Evaluator
    from sparsescope.harvest import planner as pl

    if pricing == "loop" and sp.native() is None:
        pytest.skip("no C++ compiler: loop pricing needs the fused loop")
    cfg = pl.PlannerConfig(budget=budget, eval_tokens=256, seq_len=64, calib_tokens=256, fisher_tokens=128,
                           rounds=3, loop_tokens=4)
    result = pl.plan(tiny, TEXT, TEXT, cfg, times=_bytes_times(tiny) if pricing == "bytes" else None)
    assert result.plan.notes["pricing"] == ("given" if pricing == "bytes" else "loop")
    assert (result.table["seconds"] > 0).all() and result.table["time_saved_s"].notna().all()
    table = result.table
    assert set(table.columns) >= {"layer", "site", "choice", "params", "bytes_saved", "time_saved_s",
                                  "energy_saved_uJ", "delta_ppl_est", "selected"}
    assert (table.groupby("name")["selected"].sum() == 1).all()
    evaluator = Evaluator(tiny, TEXT, seq_len=64, max_tokens=256)  # re-measure independently of the planner
    evaluator.reference()
    from sparsescope.record.calibration import calibrate

    with result.plan.applied(tiny, calibrate(tiny, TEXT, seq_len=64, max_tokens=256)):
        measured = evaluator.evaluate()["delta_ppl"] / evaluator.dense_ppl
    assert measured <= budget + 1e-9
    chosen = table[table["selected"]]
    if budget == 0:
        assert (chosen["choice"] == "dense").all() and result.plan.lm_head in ("torch", "fp32")
        assert all(json.loads(p) in ({}, {"sparsity": 0.0, "weights": "fp32"}) for p in chosen["params"])
    else:
        assert (chosen["choice"] != "dense").any()  # something fits in 0.3 %: the planner is not trivially dense
        assert set(result.comparison["planner"]) == {"ours", "ours, sparse only", "TEAL greedy"}


def test_plan_for_another_model_is_refused(tiny, tmp_path):
    from tiny import CONFIGS, tiny_model

    from sparsescope.harvest.planner import HarvestPlan, signature
    from sparsescope.intervene import Plan

    hp = HarvestPlan(Plan([]), "int8", signature(tiny))
    hp.to_yaml(tmp_path / "plan.yaml")
    other = tiny_model("qwen2")  # same layer count, but q/k/v carry biases: shapes equal, so it is accepted
    HarvestPlan.from_yaml(tmp_path / "plan.yaml").check(other)
    cfg = CONFIGS["llama"]()
    cfg.num_hidden_layers = 3
    import transformers as T

    from sparsescope.models import load_model
    from tiny import char_tokenizer

    deeper = load_model((T.LlamaForCausalLM(cfg), char_tokenizer()))
    with pytest.raises(UserError, match="layers"):
        HarvestPlan.from_yaml(tmp_path / "plan.yaml").check(deeper)
    cfg = CONFIGS["llama"]()
    cfg.intermediate_size = 48
    wider = load_model((T.LlamaForCausalLM(cfg), char_tokenizer()))
    with pytest.raises(UserError, match="shapes differ"):
        HarvestPlan.from_yaml(tmp_path / "plan.yaml").check(wider)


def test_cli_plan_end_to_end_and_bad_budget(model_dir, tmp_path):
    import pandas as pd

    from sparsescope.cli import app

    runs = tmp_path / "runs"
    bad = CliRunner().invoke(app, ["plan", "--model", str(model_dir), "--budget", "-5%", "--runs-dir", str(runs)])
    assert bad.exit_code == 2 and "negative" in bad.output and "Traceback" not in bad.output
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    res = CliRunner().invoke(app, ["plan", "--model", str(model_dir), "--budget", "2%", "--eval-tokens", "256",
                                   "--rounds", "2", "--no-teal", "--text", str(text), "--calibration", str(text),
                                   "--runs-dir", str(runs), "--out", str(tmp_path / "plan.yaml")])
    assert res.exit_code == 0, res.output
    run = next(runs.iterdir())
    assert (run / "plan.yaml").is_file() and (tmp_path / "plan.yaml").is_file()
    table = pd.read_parquet(next(run.rglob("plan*.parquet")))
    assert table["selected"].sum() == table["name"].nunique()


def test_bench_threads_are_checked():
    from sparsescope.bench import check_threads

    check_threads([2, 1], cpu_time=False)
    check_threads([1], cpu_time=True)
    with pytest.raises(UserError, match="whole numbers"):
        check_threads([0], cpu_time=False)
    with pytest.raises(UserError, match="whole numbers"):
        check_threads([1.5], cpu_time=False)
    with pytest.raises(UserError, match="cpu-time"):
        check_threads([2, 1], cpu_time=True)


def test_bench_decode_stores_speeds_per_thread_count_and_the_fused_profile(model_dir, tmp_path):
    import pandas as pd

    from sparsescope.bench import decode_run
    from sparsescope.store import RunStore

    run, table, bound, parts = decode_run(RunStore(tmp_path), str(model_dir), n_new=2, repeats=1, threads=[1, 2])
    assert sorted(table["threads"].unique()) == [1, 2]
    for _, per in table.groupby("threads"):  # the faster dense loop is 1.0 at each thread count
        assert per.loc[per["config"].str.startswith("dense"), "speedup"].max() == pytest.approx(1.0)
    assert 0 < bound["head_fraction"] < 1
    stored = pd.read_parquet(next(run.path.rglob("decode_profile*.parquet")))
    if sp.native() is not None:
        assert set(table.loc[table["config"] == "dense ours", "loop"]) == {"fused"}
        assert set(stored["config"]) == {"dense ours", "int8"}
        assert {"q", "down", "rest", "head"} <= set(stored["component"]) and (stored["ms_per_token"] >= 0).all()
    else:
        assert stored.empty

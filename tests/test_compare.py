"""The head-to-head and the weights/compare commands on tiny models: one baseline, energy recomputed by hand."""

import itertools

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.harvest.compare import (
    CompareConfig,
    compare,
    configurations,
    linear_cost,
    linear_shapes,
    pareto_front,
)
from sparsescope.intervene import LinearContext
from sparsescope.store import RunStore
from sparsescope.levers.quant import ActQuantLever, QuantLever
from sparsescope.levers.teal import TealLever
from tiny import tiny_model

TEXT = "old sailors tell long stories about cold seas, white whales and distant islands. " * 12
SMALL = CompareConfig(eval_tokens=128, seq_len=64, calib_tokens=256, group_size=16, teal=(0.5,), spike_k=(3,))


@pytest.fixture(scope="module")
def table():
    return compare(tiny_model("llama"), TEXT, TEXT, SMALL)


def test_every_row_is_measured_against_the_same_dense_baseline(table):
    dense = table[(table["method"] == "dense") & (table["config"] == "fp32")].iloc[0]
    assert dense["delta_ppl"] == 0.0 and dense["kl"] == 0.0
    assert ((table["ppl"] - table["delta_ppl"] - dense["ppl"]).abs() <= 1e-12 * table["ppl"]).all()
    assert (table["n_tokens"] == dense["n_tokens"]).all()
    assert (table.drop(index=dense.name)["kl"] > 0).all()  # every other configuration changed the model
    methods = [(m, c) for m, c, _ in configurations(SMALL)]
    assert list(zip(table["method"], table["config"])) == list(itertools.chain.from_iterable(
        [(m, c), (f"{m} comparator", c)] if "spiking" in m else [(m, c)]
        for m, c in methods))


def test_dense_row_costs_what_the_shapes_say(table):
    """fp32, per token: every weight read once (4 bytes), inputs and outputs through SRAM, one 4.6 pJ MAC each."""
    shapes = linear_shapes(tiny_model("llama"))
    weights = sum(i * o for i, o in shapes.values())
    acts = sum(i + o for i, o in shapes.values())
    dense = table.iloc[0]
    assert dense["weight_bytes_per_token"] == 4 * weights
    assert dense["act_bytes_per_token"] == 4 * acts
    assert dense["ops_per_token"] == weights == dense["macs_per_token"]
    assert dense["energy_uJ_per_token"] == pytest.approx((weights * 4.6 + 4 * weights * 162.5 + 4 * acts * 2.5) / 1e6)


def ctx(i=64, o=32):
    return LinearContext("blocks.0.mlp.W_out", 0, "mlp.W_out", None, i, o)


def test_linear_costs_follow_the_measured_density_and_the_stored_bits():
    i, o = 64, 32
    teal = TealLever(0.1, 0.5)
    teal.nonzero, teal.total = 300, 1000  # measured: 30 % of inputs non-zero
    c = linear_cost("x", i, o, [QuantLever(ctx(i, o), 4, "group", 16), teal])
    assert c["weight_bytes"] == pytest.approx(0.3 * i * o * (4 + 16 / 16) / 8)
    assert c["macs"] == pytest.approx(0.3 * i * o)
    assert c["compute_pJ"] == pytest.approx(0.3 * i * o * 4.6)  # int4 weights dequantize into fp32 MACs
    assert c["memory_pJ"] == pytest.approx(c["weight_bytes"] * 162.5 + (i + o) * 4 * 2.5)
    w8a8 = linear_cost("x", i, o, [QuantLever(ctx(i, o), 8, "per_channel", 0), ActQuantLever(8)])
    assert w8a8["compute_pJ"] == pytest.approx(i * o * 0.23) and w8a8["act_bytes"] == i + o
    tern = linear_cost("x", i, o, [QuantLever(ctx(i, o), "ternary", "per_channel", 0)])
    assert tern["compute_pJ"] == pytest.approx(i * o * 0.9)  # a ±1 weight turns each MAC into one add
    assert tern["weight_bytes"] == pytest.approx(i * o * 2 / 8 + 2)  # 2-bit codes + one fp16 scale


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    cost, loss = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 40).astype(float)
    expect = [not any(cost[j] <= cost[i] and loss[j] <= loss[i] and (cost[j], loss[j]) != (cost[i], loss[i])
                      for j in range(40)) for i in range(40)]
    assert list(pareto_front(cost, loss)) == expect


def one_error_line(result) -> str:
    """The error line; nothing else but model-loading progress may be printed (no traceback)."""
    lines = [line for line in result.output.strip().splitlines() if line.strip() and "Loading weights" not in line]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_weights_command_runs_end_to_end(model_dir, tmp_path):
    result = CliRunner().invoke(app, ["weights", "--model", str(model_dir), "--runs-dir", str(tmp_path),
                                      "--sensitivity", "--sparsities", "0.3,0.6", "--methods", "magnitude,global",
                                      "--per-layer", "--layers", "1", "--eval-tokens", "64"])
    assert result.exit_code == 0, result.output
    run = RunStore(tmp_path).latest(status="complete")
    assert run.kind == "weights"
    stats, sens, knees = (run.read(t) for t in ("weights", "sensitivity", "knees"))
    assert set(stats["site"]) == {"attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_gate", "mlp.W_in",
                                  "mlp.W_out"} and set(stats["layer"]) == {0, 1}
    assert set(zip(sens["method"], sens["layer"])) == {("magnitude", -1), ("global", -1), ("magnitude", 1)}
    assert len(knees) == 3 and (run.path / "weights.html").stat().st_size > 0


def test_compare_command_runs_end_to_end(model_dir, tmp_path):
    result = CliRunner().invoke(app, ["compare", "--model", str(model_dir), "--runs-dir", str(tmp_path),
                                      "--eval-tokens", "64", "--seq-len", "32", "--group-size", "16",
                                      "--teal", "0.5", "--spike-k", "3", "--no-compositions"])
    assert result.exit_code == 0, result.output
    run = RunStore(tmp_path).latest(status="complete")
    df = run.read("compare")
    assert run.kind == "compare" and len(df) == 12 and (df["run_id"] == run.run_id).all()
    assert "plotly" in (run.path / "compare.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["weights", "--sensitivity", "--sparsities", "0.5,1.0"], "sparsities must lie in (0, 1)"),
    (["weights", "--sensitivity", "--methods", "taylor"], "unknown pruning method"),
    (["weights", "--sensitivity", "--nm", "4:2"], "1 ≤ N < M"),
    (["weights", "--metric", "sparkle"], "unknown weight metric"),
    (["weights", "--per-layer"], "add --sensitivity"),
    (["compare", "--teal", "0.5,x"], "bad --teal"),
    (["compare", "--teal", "1.5"], "TEAL sparsities must lie in (0, 1)"),
    (["compare", "--spike-k", "-1"], "spike k must be > 0"),
    (["compare", "--coding", "morse"], "unknown spike coding"),
    (["compare", "--group-size", "24", "--eval-tokens", "64"], "group size 24 does not divide"),
    (["compare", "--calibration", "/nonexistent.txt"], "text file not found"),
])
def test_bad_input_exits_non_zero_with_one_line(model_dir, tmp_path, args, message):
    result = CliRunner().invoke(app, [*args, "--model", str(model_dir), "--runs-dir", str(tmp_path)])
    assert message in one_error_line(result)


def test_empty_calibration_file_exits_with_one_line(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = CliRunner().invoke(app, ["compare", "--model", str(model_dir), "--runs-dir", str(tmp_path),
                                      "--calibration", str(empty), "--eval-tokens", "64"])
    assert "is empty" in one_error_line(result)
    assert RunStore(tmp_path).latest(status="complete") is None


@pytest.mark.slow
def test_smollm2_compare_shares_one_baseline_and_leaves_the_model_bit_identical():
    from sparsescope.models import load_model
    from sparsescope.probes import load_text

    lm = load_model("smollm2-135m")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = CompareConfig(eval_tokens=128, seq_len=128, calib_tokens=256, teal=(0.5,), spike_k=(3,), compositions=False)
    table = compare(lm, load_text("heldout"), load_text("calibration"), cfg).set_index("config")
    assert table.loc["fp32", "delta_ppl"] == 0.0 and table.loc["fp32", "kl"] == 0.0
    assert ((table["ppl"] - table["delta_ppl"] - table.loc["fp32", "ppl"]).abs() <= 1e-12 * table["ppl"]).all()
    n_params = sum(i * o for i, o in linear_shapes(lm).values())
    assert table.loc["fp32", "weight_bytes_per_token"] == 4 * n_params
    assert table.loc["int4 group 64", "bits_per_weight"] == 4.25  # SmolLM2's 576/1536 widths take group 64
    assert 0.4 < table.loc["50%", "input_density"] < 0.6  # TEAL's calibrated threshold roughly holds on held-out text
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())

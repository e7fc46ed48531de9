"""The spike lever: bit-exact convert/restore, error shrinking with k, statistics and SOPs recomputed by brute force
from captured inputs, the energy table fed by them, bad input refused with the model untouched, the CLI end to end."""

import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.errors import UserError
from sparsescope.intervene import Plan, Rule
from sparsescope.models import load_model
from sparsescope.record.calibration import calibrate
from sparsescope.spiking import coding
from sparsescope.spiking.convert import SpikeLever, convert, restore, spike_levers, spike_plan
from sparsescope.spiking.stats import energy_table, spike_table
from sparsescope.spiking.study import StudyConfig, only_layer, parse_sweep, run_study, with_param
from sparsescope.store import RunStore
from tiny import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog near a quiet river bank; " * 8


def ids(seed: int = 0, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(3, 100, shape, generator=torch.Generator().manual_seed(seed))


def snapshot(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def assert_untouched(lm, before: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
    after = lm.model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert getattr(lm, "_applied", None) is None
    assert torch.equal(lm.forward(ids()), logits)


def capture_inputs(lm, applied) -> dict[str, list[torch.Tensor]]:
    """Hook each converted linear's input ourselves (a pre-hook on the wrapper sees the dense x)."""
    seen: dict[str, list[torch.Tensor]] = {}
    for lv in spike_levers(applied):
        module = lm.sites.linear(lv.layer, lv.site)
        module.register_forward_pre_hook(lambda m, a, name=lv.name: seen.setdefault(name, []).append(a[0].clone()))
    return seen


# -- convert / restore ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_convert_then_restore_is_bit_identical(arch):
    lm = tiny_model(arch)
    params = {n: (p, p.detach().clone()) for n, p in lm.model.named_parameters()}
    dense = lm.forward(ids())
    applied = convert(lm)
    assert len(spike_levers(applied)) == len(lm.sites.linear_names())  # every eligible linear, no LM head
    assert not torch.equal(lm.forward(ids()), dense)
    restore(lm)
    assert dict(lm.model.named_parameters()).keys() == params.keys()
    for name, p in lm.model.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1])
    assert torch.equal(lm.forward(ids()), dense)


def test_gpt2_fused_qkv_fans_out_to_all_three():
    lm = tiny_model("gpt2")
    with convert(lm) as applied:
        qkv = next(lv for lv in spike_levers(applied) if lv.site == "attn.W_Q")
        assert qkv.stats.out_features == 3 * lm.model.config.n_embd


def test_outputs_approach_dense_as_k_grows():
    lm = tiny_model("llama")
    dense = lm.forward(ids())
    errors = []
    for k in (1, 2, 4, 8, 16):
        with convert(lm, k=k):
            errors.append(float((lm.forward(ids()) - dense).pow(2).mean()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 20


# -- statistics against brute force -------------------------------------------------------------------------------


def brute_force(x: torch.Tensor, k: float, coding_name: str, fan_out: int, max_steps: int | None = None) -> dict:
    """Recount one linear's spikes token by token, channel by channel, with Python integers."""
    s, v_th = coding.encode(x.reshape(-1, x.shape[-1]).float(), k)
    if max_steps is not None:
        top = 2**max_steps - 1 if coding_name == "bitwise" else max_steps
        s = s.clamp(-top, top)
    rows, x_hat = s.tolist(), (s.double() * v_th.double()).numpy()
    spikes = slots = steps_sum = steps_max = zeros = le7 = 0
    per_channel = [0] * len(rows[0])
    for row in rows:
        top = max(abs(v) for v in row)
        steps = max(1, top.bit_length() if coding_name == "bitwise" else top)
        steps_sum, steps_max, slots = steps_sum + steps, max(steps_max, steps), slots + steps * len(row)
        for j, v in enumerate(row):
            n = bin(abs(v)).count("1") if coding_name == "bitwise" else abs(v)
            spikes, per_channel[j] = spikes + n, per_channel[j] + n
            zeros, le7 = zeros + (v == 0), le7 + (abs(v) <= 7)
    xd = x.reshape(-1, x.shape[-1]).double().numpy()
    cos = (xd * x_hat).sum(1) / (np.linalg.norm(xd, axis=1) * np.linalg.norm(x_hat, axis=1))
    entries = len(rows) * len(rows[0])
    return {"spike_sparsity": 1 - spikes / slots, "firing_rate": spikes / slots, "zero_frac": zeros / entries,
            "spikes_per_channel": spikes / entries,
            "silent_channels": sum(c == 0 for c in per_channel) / len(per_channel),
            "abs_le_7": le7 / entries, "steps": steps_sum / len(rows), "steps_max": steps_max,
            "sops": spikes * fan_out, "macs": entries * fan_out, "recon_mse": float(((xd - x_hat) ** 2).mean()),
            "recon_cos": float(cos.mean())}


@pytest.mark.parametrize("coding_name,k,max_steps", [("bitwise", 3, None), ("ternary", 2.5, None), ("bitwise", 3, 2)])
def test_lever_statistics_equal_a_recount_of_captured_inputs(coding_name, k, max_steps):
    lm = tiny_model("llama")
    params = {"k": k, "coding": coding_name} | ({"max_steps": max_steps} if max_steps else {})
    with convert(lm, **params) as applied:
        seen = capture_inputs(lm, applied)
        lm.forward(ids(0))
        lm.forward(ids(1, (1, 9)))  # two calls of different shapes accumulate
        for lv in spike_levers(applied):
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[lv.name]])
            expected = brute_force(x, k, coding_name, lv.stats.out_features, max_steps)
            got = lv.stats.metrics()
            assert got.keys() == expected.keys()
            for metric, value in expected.items():
                rel = 1e-6 if metric.startswith("recon") else 1e-12  # the lever decodes in float32
                assert got[metric] == pytest.approx(value, rel=rel), (lv.name, metric)
        table = spike_table(spike_levers(applied), "r", "m")
        row = table.query("layer == 1 and site == 'mlp.W_out' and metric == 'sops'").iloc[0]
        lv = next(lv for lv in spike_levers(applied) if lv.name == "blocks.1.mlp.W_out")
        assert row.value == lv.stats.spikes * lv.stats.out_features and row.n_tokens == 57 and row.threshold == k


def test_binary_coding_on_signed_inputs_is_refused_and_model_restored():
    lm = tiny_model("llama")
    before, dense = snapshot(lm), lm.forward(ids())
    with pytest.raises(UserError, match="binary coding needs non-negative"):
        with convert(lm, coding="binary"):
            lm.forward(ids())
    assert_untouched(lm, before, dense)


def test_wta_keeps_at_most_wta_spikes_per_token_and_step():
    lm = tiny_model("llama")
    with convert(lm, wta=2) as applied:
        seen = capture_inputs(lm, applied)
        lm.forward(ids())
        for lv in spike_levers(applied):
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[lv.name]])
            full = brute_force(x, 3, "bitwise", lv.stats.out_features)
            assert lv.stats.spikes <= 2 * lv.stats.steps_sum < full["sops"] / lv.stats.out_features


def test_if_neurons_use_the_calibration_percentile_and_decode_by_rate():
    lm = tiny_model("llama")
    calibration = calibrate(lm, TEXT)
    with convert(lm, neuron="if", T=6, percentile=99.0, calibration=calibration) as applied:
        seen = capture_inputs(lm, applied)
        lm.forward(ids())
        for lv in spike_levers(applied):
            sample = np.sort(calibration[lv.name]["abs_sample"].numpy())
            v_th = float(sample[min(round(0.99 * len(sample)), len(sample) - 1)])  # the 99th percentile order statistic
            assert lv.v_th == v_th
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[lv.name]]).double()
            # soft-reset IF fed |x| for T steps fires floor(|x|·T/v_th) times, at most T (neurons.py closed form)
            count = torch.clamp(torch.floor(x.abs() * 6 / v_th), max=6)
            x_hat = torch.sign(x) * count * v_th / 6
            # (float32 membrane sums may land an entry on the other side of a level: allow a couple)
            assert abs(lv.stats.spikes - int(count.sum())) <= 2
            assert lv.stats.steps_sum == 6 * x.shape[0] and lv.stats.steps_max == 6
            assert lv.stats.sq_err == pytest.approx(float((x - x_hat).pow(2).sum()), rel=1e-3)


# -- energy -------------------------------------------------------------------------------------------------------


def test_energy_table_is_fed_by_the_measured_statistics():
    lm = tiny_model("llama")
    with convert(lm) as applied:
        lm.forward(ids())
    levers = spike_levers(applied)
    table = energy_table(levers)
    for lv in levers:
        rows = table[table["name"] == lv.name].set_index("method")
        st = lv.stats
        assert rows.loc["spiking", "sops"] == pytest.approx(st.spikes * st.out_features)
        assert rows.loc["dense", "macs"] == st.tokens * st.in_features * st.out_features
        assert rows.loc["sparse", "macs"] == pytest.approx((st.tokens * st.in_features - st.zeros) * st.out_features)
        # spike maps (2 bits per channel per step) + membrane potentials read and written every step (fp32)
        act_bits = st.steps_sum * (st.in_features * 2 + 2 * st.out_features * 32)
        assert rows.loc["spiking", "act_bytes"] == pytest.approx(act_bits / 8)
    totals = table[table["name"] == "total"].set_index("method")
    per_linear = table[table["name"] != "total"].groupby("method")["energy_total_uJ"].sum()
    assert totals["energy_total_uJ"].to_dict() == pytest.approx(per_linear.to_dict())


# -- plans and bad input --------------------------------------------------------------------------------------------


def test_per_layer_plan_from_yaml(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"rules": [
        {"lever": "spike", "params": {"k": 2}, "layers": [0]},
        {"lever": "spike", "params": {"k": 4, "coding": "ternary"}, "layers": [1], "sites": ["mlp.W_out"]}]}))
    lm = tiny_model("llama")
    with convert(lm, path) as applied:
        got = {(lv.layer, lv.site): (lv.config.k, lv.config.coding) for lv in spike_levers(applied)}
    assert got == {**{(0, s): (2, "bitwise") for s in lm.sites.weight_sites}, (1, "mlp.W_out"): (4, "ternary")}


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, "k must be > 0"),
    ({"k": -1.5}, "k must be > 0"),
    ({"neuron": "if", "T": 0}, "T must be a whole number"),
    ({"coding": "morse"}, "unknown spike coding"),
    ({"neuron": "izhikevich"}, "unknown neuron"),
    ({"neuron": "if", "coding": "bitwise"}, "ternary"),
    ({"T": 4}, "cap adaptive spikes with max_steps"),
    ({"kk": 3}, "unknown spike parameter"),
    ({"layers": [7]}, "layer 7 does not exist"),
    ({"sites": ["lm_head"]}, "weight site 'lm_head'"),
    ({"sites": ["mlp.W_gate"]}, "weight site 'mlp.W_gate'"),  # GPT-2 has no gate
])
def test_bad_input_is_refused_and_model_untouched(kwargs, message):
    lm = tiny_model("gpt2")
    before, dense = snapshot(lm), lm.forward(ids())
    with pytest.raises(UserError, match=message):
        convert(lm, **kwargs)
    assert_untouched(lm, before, dense)


def test_overlapping_spike_rules_are_refused_and_model_untouched():
    lm = tiny_model("llama")
    before, dense = snapshot(lm), lm.forward(ids())
    plan = Plan([Rule("spike", {"k": 2}), Rule("spike", {"k": 3}, layers=[1])])
    with pytest.raises(UserError, match="more than one spike rule"):
        convert(lm, plan)
    assert_untouched(lm, before, dense)


def test_convert_twice_and_restore_unconverted_are_refused():
    lm = tiny_model("llama")
    before, dense = snapshot(lm), lm.forward(ids())
    with pytest.raises(UserError, match="no plan is applied"):
        restore(lm)
    assert_untouched(lm, before, dense)
    convert(lm, k=3)
    converted = lm.forward(ids())
    with pytest.raises(UserError, match="already converted"):
        convert(lm, k=2)
    with pytest.raises(UserError, match="already converted"):
        convert(lm, neuron="lif")  # refused before calibrating on a converted model
    assert torch.equal(lm.forward(ids()), converted)
    restore(lm)
    assert_untouched(lm, before, dense)


def test_plan_or_parameters_not_both():
    with pytest.raises(UserError, match="not both"):
        spike_plan(Plan([Rule("spike")]), k=2)
    with pytest.raises(UserError, match="no 'spike' rule"):
        spike_plan(Plan([Rule("prune", {"sparsity": 0.5})]))


# -- the study and the CLI ------------------------------------------------------------------------------------------


def test_study_helpers():
    assert parse_sweep("k=2,2.5,3") == ("k", [2.0, 2.5, 3.0])
    assert parse_sweep("T=2,4") == ("T", [2, 4])
    for bad in ("k", "q=1,2", "k=a,b"):
        with pytest.raises(UserError):
            parse_sweep(bad)
    plan = Plan([Rule("spike", {"k": 3}, layers=[0, 1]), Rule("spike", {"k": 2}, layers=[2])])
    assert [r.layers for r in only_layer(plan, 1).rules] == [[1]]
    assert [r.params["k"] for r in with_param(plan, "k", 4).rules] == [4, 4] and plan.rules[0].params["k"] == 3
    with pytest.raises(UserError, match="k must be > 0"):
        with_param(plan, "k", 0)


def test_study_per_layer_quality_and_sweep():
    lm = tiny_model("llama")
    config = StudyConfig(eval_tokens=96, per_layer=True, sweep=("k", [2, 4]))
    labels = []
    result = run_study(lm, spike_plan(), TEXT, config, run_id="r", progress=labels.append)
    assert labels == ["dense", "whole model", "layer 0", "layer 1", "k=2", "k=4"]
    quality = result.tables["quality"]
    assert set(quality["scope"]) == {"dense", "model", "layer"}
    dense = quality.query("scope == 'dense'")["value"].item()
    ppl = quality.query("scope == 'model' and metric == 'ppl'")["value"].item()
    assert quality.query("scope == 'model' and metric == 'delta_ppl'")["value"].item() == pytest.approx(ppl - dense)
    sweep = result.tables["sweep"].pivot_table(index="setting", columns="metric", values="value")
    assert sweep.loc[4.0, "zero_frac"] < sweep.loc[2.0, "zero_frac"]  # a lower threshold silences fewer channels
    assert list(result.layers["layer"]) == [0, 1, -1]
    assert getattr(lm, "_applied", None) is None


def test_cli_spike_end_to_end(model_dir, tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["spike", "--model", str(model_dir), "--eval-tokens", "96", "--per-layer",
                                      "--sweep", "k=2,4", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    run = RunStore(runs).latest(kind="spike", status="complete")
    assert set(run.manifest["tables"]) == {"spikes", "energy", "quality", "sweep"}
    spikes = run.read("spikes")
    assert (spikes["run_id"] == run.run_id).all()
    assert set(spikes["site"]) == set(load_model(model_dir).sites.weight_sites)
    assert run.manifest["config"]["plan"]["rules"][0]["lever"] == "spike"


@pytest.mark.parametrize("args", [["--k", "-1"], ["--k=0"], ["--steps", "0", "--neuron", "if"],
                                  ["--coding", "morse"], ["--layers", "5"]])
def test_cli_bad_input_is_one_line_and_non_zero(model_dir, tmp_path, args):
    result = CliRunner().invoke(app, ["spike", "--model", str(model_dir), "--runs-dir", str(tmp_path), *args])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr  # (the tqdm bar is transformers')
    assert not list(tmp_path.iterdir())  # no run is left behind


def test_cli_plan_file(model_dir, tmp_path):
    plan = tmp_path / "plan.yaml"
    Plan([Rule("spike", {"k": 2.5, "coding": "ternary"}, layers=[1], sites=["mlp.W_out"])], "one").to_yaml(plan)
    result = CliRunner().invoke(app, ["spike", "--model", str(model_dir), "--plan", str(plan), "--eval-tokens", "64",
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    spikes = RunStore(tmp_path / "runs").latest(kind="spike").read("spikes")
    assert set(zip(spikes["layer"], spikes["site"], spikes["threshold"])) == {(1, "mlp.W_out", 2.5)}
    assert math.isfinite(spikes.query("metric == 'sops'")["value"].item())

"""Issue 10: nothing lost, nothing cryptic. Behaviour tests for awkward inputs that are accepted or must be
refused in a specific way; the plain "refused with one line" cases live in tests/data/bad_inputs.yaml."""

import importlib
import json
from pathlib import Path

import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.probes import Prompt, Suite
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import Metric, parse_metrics, token_metrics
from tiny import tiny_model

TEXTS = ["the cat sat on the mat", "a quick brown fox", "zz"]


def suite(name="s", split="id", texts=TEXTS, source="test"):
    return Suite(name, split, [Prompt(f"p{i}", t, name, split) for i, t in enumerate(texts)], source, "test")


# -- 5. fractions stay in [0, 1] --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["near_zero_frac@inf", "near_zero_frac@1e400", "teal_sparsity@1.5", "teal_sparsity@1",
                                  "mass_density@2", "delta_frac@inf"])
def test_metric_parameters_outside_their_range_are_refused(spec):
    with pytest.raises(UserError, match="must lie in"):
        parse_metrics(spec)
    name, _, t = spec.partition("@")
    with pytest.raises(UserError, match="must lie in"):  # building a Metric directly is checked the same way
        Metric(name, float(t))


def test_huge_threshold_counts_only_valid_entries_of_ragged_rows():
    """A threshold whose t·RMS overflows to inf counts every valid entry (1.0), never the masked ones."""
    x = torch.rand(3, 6) + 0.1
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    for spec in ("near_zero_frac@1e39", "near_zero_frac@1e39,teal_sparsity@0.5"):  # the no-sort and the sort path
        got = token_metrics(x, parse_metrics(spec), mask)[:, 0]
        assert got.tolist() == [1.0, 1.0, 1.0]


def test_attention_pattern_agrees_with_other_sites_on_a_huge_threshold():
    """Every entry is ≤ 1e39·RMS, so near-zero is exactly 1 at every site; masked (future) keys never count."""
    config = RecordConfig(sites=["attn.hook_pattern", "mlp.hook_post"], metrics="near_zero_frac@1e39", neurons=False,
                          window=0)
    run = Recorder(tiny_model("llama"), config).record_suite(suite())
    assert set(run.activations.value) == {1.0}
    assert set(run.prompts[run.prompts.metric == "near_zero_frac"].value) == {1.0}


# -- 6. the Python API takes what a user naturally passes ------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def test_record_takes_a_string_as_one_prompt_and_one_site(lm):
    import sparsescope

    run = sparsescope.record(lm, "The cat sat", sites="mlp.hook_post", layers="1", metrics="hoyer", neurons=False,
                             window=0)
    assert run.prompts.prompt_id.unique().tolist() == ["p0"]
    assert set(zip(run.activations.layer, run.activations.site)) == {(1, "mlp.hook_post")}
    one = sparsescope.record(lm, ["The cat sat"], sites=["mlp.hook_post"], layers=[1], metrics=["hoyer"],
                             neurons=False, window=0)
    assert one.activations.value.tolist() == run.activations.value.tolist()


def test_same_suite_twice_is_recorded_once_and_different_suites_under_one_name_are_refused(lm):
    rec = Recorder(lm, RecordConfig(sites=["mlp.hook_post"], metrics="hoyer", neurons=False, window=0))
    with pytest.warns(UserWarning, match="listed twice"):
        run = rec.run([suite(), suite()])
    assert len(run.prompts) == len(rec.run([suite()]).prompts)
    with pytest.raises(UserError, match="two different suites are named 's'"):
        rec.run([suite(), suite(texts=["other text"], source="other.txt")])
    rec.run([suite(), suite(split="ood", texts=["other text"])])  # a different split is a different part


def test_apply_takes_a_plan_dict_like_convert(lm):
    from sparsescope import intervene

    plan = {"rules": [{"lever": "spike", "params": {"k": 3}, "layers": "0", "sites": "mlp.W_out"}]}
    with intervene.apply(lm, plan) as applied:
        assert list(applied.levers) == ["blocks.0.mlp.W_out"]
    assert lm._applied is None


# -- 4. failures outside the user's input: one line, a log with the traceback, the run left resumable ----------
def _cli(*args):
    from typer.testing import CliRunner

    from sparsescope.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _scan(model_dir, runs, *extra):
    return _cli("scan", "--model", model_dir, "--suites", "prose,random_tokens", "--max-tokens", "16",
                "--window", "8", "--metrics", "hoyer", "--runs-dir", runs, *extra)


def test_full_disk_during_scan_is_one_line_with_a_log_and_the_run_resumes(model_dir, tmp_path, monkeypatch):
    import errno

    import sparsescope.store.run as run_module

    original, calls = run_module.atomic_write_parquet, {"n": 0}

    def fill_up(path, df):
        calls["n"] += 1
        if calls["n"] > 3:  # the first suite's three part tables fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, df)

    monkeypatch.setattr(run_module, "atomic_write_parquet", fill_up)
    res = _scan(model_dir, tmp_path)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert "No space left on device" in line and "finish it with `sparsescope scan --resume" in line, line
    log = Path(line.split("full traceback: ")[1].split(")")[0])
    assert log.is_file() and "Traceback" in log.read_text() and log.parent == tmp_path / ".logs"
    monkeypatch.setattr(run_module, "atomic_write_parquet", original)
    res = _scan(model_dir, tmp_path, "--resume", "last")
    assert res.exit_code == 0 and "1 already done" in res.output.replace("\n", " "), res.output


def test_interrupt_before_any_run_exists_says_nothing_was_saved(model_dir, tmp_path, monkeypatch):
    import sparsescope.models

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparsescope.models, "load_model", ctrl_c)
    res = _scan(model_dir, tmp_path)
    assert res.exit_code == 130 and "nothing was saved" in res.output and "resume" not in res.output, res.output


def test_an_unexpected_error_is_one_line_with_the_path_of_its_traceback(model_dir, tmp_path, monkeypatch):
    from sparsescope.record import Recorder

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Recorder, "record_suite", bug)
    res = _scan(model_dir, tmp_path)
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert "ZeroDivisionError: division by zero" in line and "finished nothing and is marked incomplete" in line
    assert "record_suite" in Path(line.split("full traceback: ")[1].split(")")[0]).read_text()


# -- 9. one writer per run ---------------------------------------------------------------------------------------
HOLD = """
import sys
from sparsescope.store import RunDir
RunDir(sys.argv[1]).lock()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_run_has_one_writer_and_a_dead_writer_never_blocks(tmp_path):
    import os
    import subprocess
    import sys

    import pandas as pd

    import sparsescope
    from sparsescope.store import RunDir, RunStore

    run = RunStore(tmp_path).create({"kind": "scan", "model": "tiny"})
    run.write_part("a|id", {"activations": pd.DataFrame({"x": [1]})})
    run.mark_incomplete("interrupted")
    env = {**os.environ, "PYTHONPATH": str(Path(sparsescope.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline() == b"locked\n"
        again = RunDir(run.path)
        with pytest.raises(UserError, match=f"being written by process {holder.pid}"):
            again.lock()
        with pytest.raises(UserError, match="being written"):  # a write without the lock takes it too
            again.write_part("b|id", {"activations": pd.DataFrame({"x": [2]})})
        assert again.done_parts() == {"a|id"}
    finally:
        holder.kill()  # like kill -9: no cleanup runs in the holder
        holder.wait()
    RunDir(run.path).lock().unlock()  # the kernel dropped the dead holder's lock
    (run.path / ".lock").write_text(f"process {holder.pid} on elsewhere")  # a stale lock file on its own
    resumed = RunDir(run.path).lock()
    resumed.write_part("b|id", {"activations": pd.DataFrame({"x": [2]})})
    resumed.finalize()
    assert RunDir(run.path).read("activations").x.tolist() == [1, 2]


# -- 4./8. the embedded cache, the evaluator and the benchmarks say what they did -------------------------------
def test_a_truncated_embedded_cache_is_not_cached_and_gets_rebuilt(tmp_path, monkeypatch):
    from sparsescope.models import loading

    monkeypatch.setenv("SPARSESCOPE_CACHE", str(tmp_path))
    if not loading.importlib.util.find_spec(loading.EMBEDDED["smollm2-135m"]["package"]):
        pytest.skip("the embedded model's carrier package is not installed")
    target = loading.embedded_cache_dir("smollm2-135m")
    target.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(target / "model.safetensors"))
    (target / "source.json").write_text(json.dumps(
        {"digest": loading._file_digest(loading.embedded_gguf("smollm2-135m"))}))
    assert loading.available_models()[0]["cached"]
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert not loading.available_models()[0]["cached"]

    class Rebuilt(Exception):
        pass

    def rebuild(*a, **k):
        raise Rebuilt

    monkeypatch.setattr(loading, "_build_embedded_cache", rebuild)
    notes = []
    with pytest.raises(Rebuilt):
        loading.load_embedded("smollm2-135m", progress=notes.append)
    assert "truncated" in notes[0]


def test_evaluator_warns_when_the_text_has_fewer_tokens_than_asked(lm):
    from sparsescope.eval import Evaluator

    text = "the quick brown fox jumps over the lazy dog " * 8
    with pytest.warns(UserWarning, match="fewer than the 1,000,000,000 asked for"):
        ev = Evaluator(lm, text, seq_len=32, max_tokens=10**9)
    assert ev.n_tokens == (len(text) // 32) * 31


def test_truncation_warning_names_the_context_when_max_tokens_exceeds_it(lm):
    rec = Recorder(lm, RecordConfig(metrics="hoyer", max_tokens=10_000, window=0))
    with pytest.warns(UserWarning, match="the model's context is 256 tokens"):
        rec.tokenize(["x" * 300])


def test_bench_load_labels_the_first_load_by_what_it_does(monkeypatch):
    import sparsescope.bench as bench

    monkeypatch.setattr(bench, "_child", lambda args, env=None: {"seconds": 2.0})
    assert bench.load_time("some/dir")["first"] == "cold load, no cache to build"
    assert bench.load_time("smollm2-135m")["first"] == "GGUF dequantisation + cache write"


# -- 2./3. a finished scan exits 0 with its report; `report last` reads the last scan --------------------------
@pytest.mark.parametrize("extra", [["--suites", "prose", "--metrics", "zero_frac"],
                                   ["--suites", "random_tokens", "--metrics", "near_zero_frac"],
                                   ["--suites", "ladder:shuffle", "--metrics", "hoyer"]])
def test_a_finished_scan_exits_0_and_writes_its_report_whatever_it_recorded(model_dir, tmp_path, extra):
    res = _cli("scan", "--model", str(model_dir), "--max-tokens", "16", "--window", "8", "--runs-dir", str(tmp_path),
               *extra)
    assert res.exit_code == 0, res.output
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (run / "report.html").is_file() and "error" not in res.output


def test_report_last_reads_the_last_scan_even_after_other_kinds(model_dir, tmp_path):
    assert _scan(model_dir, tmp_path).exit_code == 0
    res = _cli("spike", "--model", str(model_dir), "--eval-tokens", "64", "--runs-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    res = _cli("report", "last", "--runs-dir", str(tmp_path))
    assert res.exit_code == 0 and "hoyer, ID vs OOD per layer" in res.output, res.output
    spike_run = next(p.name for p in tmp_path.iterdir() if p.name.endswith("-spike"))
    res = _cli("report", spike_run, "--runs-dir", str(tmp_path))
    assert res.exit_code == 2 and f"run {spike_run} is a spike run, not a scan run" in res.output, res.output


# -- 8./9. --resume finishes the run as it was started, by one process at a time ---------------------------------
@pytest.fixture
def interrupted(model_dir, tmp_path, monkeypatch):
    """A scan run interrupted after its first suite (prose done, random_tokens left)."""
    original, calls = Recorder.record_suite, {"n": 0}

    def stop_on_second(self, suite, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, suite, *a, **k)

    monkeypatch.setattr(Recorder, "record_suite", stop_on_second)
    assert _scan(model_dir, tmp_path).exit_code == 130
    monkeypatch.setattr(Recorder, "record_suite", original)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


def test_resume_refuses_options_that_differ_from_the_run(interrupted):
    runs = interrupted.parent
    res = _cli("scan", "--resume", "last", "--suites", "code", "--max-tokens", "99", "--runs-dir", runs)
    assert res.exit_code == 2, res.output
    assert "drop --suites (the run has 'prose,random_tokens'), --max-tokens (the run has 16)" in res.output
    res = _cli("scan", "--resume", "last", "--max-tokens", "16", "--metrics", "hoyer", "--runs-dir", runs)
    assert res.exit_code == 0, res.output  # the run's own values may be repeated


def test_a_second_resume_of_a_run_being_written_is_refused(interrupted):
    import os
    import subprocess
    import sys

    import sparsescope

    env = {**os.environ, "PYTHONPATH": str(Path(sparsescope.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(interrupted)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline() == b"locked\n"
        res = _cli("scan", "--resume", interrupted.name, "--runs-dir", interrupted.parent)
        assert res.exit_code == 2 and f"being written by process {holder.pid}" in res.output, res.output
    finally:
        holder.kill()
        holder.wait()
    res = _cli("scan", "--resume", interrupted.name, "--runs-dir", interrupted.parent)
    assert res.exit_code == 0 and "1 already done" in res.output.replace("\n", " "), res.output


def test_torch_peak_is_the_exact_high_water_mark_of_tensor_bytes():
    from sparsescope.bench import torch_peak

    def allocate():
        a = torch.zeros(1000, 1000)  # 4 MB
        b = torch.zeros(500, 1000)  # 2 MB: 6 MB live
        del a
        c = torch.zeros(2000, 1000)  # 8 MB: 10 MB live, the peak
        return float(b.sum() + c.sum())

    result, peak = torch_peak(allocate)
    assert result == 0.0 and 10_000_000 <= peak < 10_000_000 + 4096  # + the two 4-byte sums


def test_bench_memory_counts_what_the_recorder_allocates_beyond_the_forward(monkeypatch):
    """With a vocabulary large enough for the logits [B, T, V] to dominate the forward's peak: the fused logit
    baselines add (almost) nothing to it, while a logit pass that copied the logits would hold 2 × their bytes at
    once (closed-form lower bound), and the benchmark must see that copy as the recorder's; the streaming state
    does not grow with the tokens."""
    import transformers as T
    from tiny import char_tokenizer

    from sparsescope.bench import recorder_memory
    from sparsescope.models import load_model
    from sparsescope.probes import Prompt, Suite

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=8192, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    big = load_model((T.AutoModelForCausalLM.from_config(config), char_tokenizer()))
    texts = ["the quick brown fox jumps over the lazy dog", "a small cat sleeps on warm stones"]
    suite = Suite("t", "id", [Prompt(f"p{i}", t, "t", "id") for i, t in enumerate(texts)], "test", "CC0-1.0")
    sites = dict(sites="mlp.hook_post", metrics="hoyer")
    fused = recorder_memory(big, suite, 4, **sites)
    width = len(big.tokenizer(" ".join([texts[0]] * 4))["input_ids"])  # the batch is padded to the longest
    logits_mb = 2 * width * 8192 * 4 / 2**20
    assert fused["tokens"] == sum(len(big.tokenizer(" ".join([t] * 4))["input_ids"]) for t in texts)
    assert logits_mb <= fused["forward_peak_mb"] < 1.5 * logits_mb and fused["recorder_mb"] < 0.1 * logits_mb

    recorder = importlib.import_module("sparsescope.record.recorder")  # the package's `record` shadows the name
    real = recorder.next_token_sums
    monkeypatch.setattr(recorder, "next_token_sums", lambda logits, *a: real(logits.clone(), *a))
    copying = recorder_memory(big, suite, 4, **sites)
    assert copying["forward_peak_mb"] == pytest.approx(fused["forward_peak_mb"])
    assert copying["record_peak_mb"] >= 2 * logits_mb and copying["recorder_mb"] > 0.5 * logits_mb
    assert recorder_memory(big, suite, 1, **sites)["state_mb"] == pytest.approx(fused["state_mb"])

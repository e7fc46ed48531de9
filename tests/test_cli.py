"""The CLI end to end on a tiny model directory: scan, report, runs, resume after a crash, one-line errors."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.record import Recorder

runner = CliRunner()


def scan(model_dir, runs, *extra):
    return runner.invoke(app, ["scan", "--model", str(model_dir), "--suites", "prose,random_tokens",
                               "--max-tokens", "32", "--window", "16", "--runs-dir", str(runs), *extra])


def test_scan_report_runs_and_query(model_dir, tmp_path):
    res = scan(model_dir, tmp_path)
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["suites"] == ["prose", "random_tokens"]
    acts = pd.read_parquet(run_dir / "activations.parquet")
    assert set(acts.split) == {"id", "ood"} and acts.layer.nunique() == 2
    assert (run_dir / "report.html").is_file()
    res = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 0 and "complete" in res.output
    res = runner.invoke(app, ["report", "last", "--runs-dir", str(tmp_path), "--metric", "near_zero_frac@0.1"])
    assert res.exit_code == 0 and "near_zero_frac" in res.output


def test_interrupted_scan_resumes_to_the_same_tables(model_dir, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert scan(model_dir, whole).exit_code == 0
    crashed = tmp_path / "crashed"
    calls = {"n": 0}
    original = Recorder.record_suite

    def crash_on_second(self, suite, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, suite, *a, **k)

    monkeypatch.setattr(Recorder, "record_suite", crash_on_second)
    res = scan(model_dir, crashed)
    assert res.exit_code == 130 and "resume" in res.output
    monkeypatch.setattr(Recorder, "record_suite", original)
    res = runner.invoke(app, ["runs", "--runs-dir", str(crashed)])
    assert "incomplete" in res.output
    res = runner.invoke(app, ["report", "last", "--runs-dir", str(crashed)])
    assert res.exit_code != 0  # an interrupted run is never read as complete
    res = runner.invoke(app, ["scan", "--resume", "last", "--runs-dir", str(crashed)])
    assert res.exit_code == 0, res.output
    assert "1 already done" in res.output.replace("\n", " ")
    read = lambda root: pd.read_parquet(next(p for p in root.iterdir() if p.is_dir()) / "activations.parquet")
    cols = ["suite", "split", "layer", "site", "metric", "threshold", "value", "n_tokens"]
    a = read(whole)[cols].sort_values(cols[:6]).reset_index(drop=True)
    b = read(crashed)[cols].sort_values(cols[:6]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert "Traceback" not in res.output
    assert any(needle in l for l in lines), res.output


@pytest.mark.parametrize("args, needle", [
    (["--model", "no-such-model"], "not found"),
    (["--model", "/nonexistent/dir"], "not found"),
    (["--sites", "mlp.hook_nope"], "unknown site"),
    (["--metrics", "sparsity_magic"], "unknown metric"),
    (["--layers", "0-x"], "bad --layers"),
    (["--suites", "no_such_suite"], "no_such_suite"),
])
def test_bad_scan_input(model_dir, tmp_path, args, needle):
    base = ["scan", "--model", str(model_dir), "--runs-dir", str(tmp_path / "runs")]
    res = runner.invoke(app, base + args if "--model" not in args else ["scan", "--runs-dir", str(tmp_path)] + args)
    one_line_error(res, needle)


def test_bad_files_and_dirs(model_dir, tmp_path):
    not_model = tmp_path / "empty_dir"
    not_model.mkdir()
    one_line_error(runner.invoke(app, ["scan", "--model", str(not_model), "--runs-dir", str(tmp_path)]), "not a model")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(scan(model_dir, tmp_path / "r1", "--suites", str(empty)), "empty")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    one_line_error(scan(model_dir, tmp_path / "r2", "--suites", str(latin)), "UTF-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(scan(model_dir, blocker / "runs"), "not writable")


def test_corrupt_run_is_reported_incomplete(model_dir, tmp_path):
    assert scan(model_dir, tmp_path).exit_code == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (run_dir / "activations.parquet").write_bytes(b"PAR1 truncated")
    res = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert "incomplete" in res.output
    res = runner.invoke(app, ["report", run_dir.name, "--runs-dir", str(tmp_path)])
    one_line_error(res, "incomplete")


def test_sigkilled_subprocess_scan_resumes_to_the_same_tables(model_dir, tmp_path):
    """A real crash: the scan process is SIGKILLed mid-run (no Python cleanup at all), then `scan --resume last`
    finishes it; every table equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    suites = "prose,random_tokens,chat,code,shuffled_words"
    args = ["--model", str(model_dir), "--suites", suites, "--max-tokens", "16", "--window", "8", "--no-report",
            "--sites", "mlp.hook_post,hook_resid_post"]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert runner.invoke(app, ["scan", *args, "--runs-dir", str(whole)]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-c", "from sparsescope.cli import app; app()"]
    proc = subprocess.Popen([*cli, "scan", *args, "--runs-dir", str(crashed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    parts = lambda: list(crashed.glob("*/parts/*.prompts.parquet"))  # noqa: E731
    while not parts() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: after the first part, before the fifth
    proc.wait()
    (run_dir,) = [p for p in crashed.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] != "complete"
    assert 1 <= len(parts()) < 5
    res = runner.invoke(app, ["scan", "--resume", "last", "--runs-dir", str(crashed), "--no-report"])
    assert res.exit_code == 0, res.output
    for table in ("activations", "prompts", "neurons"):
        a, b = (pd.read_parquet(next(p for p in root.iterdir() if p.is_dir()) / f"{table}.parquet")
                .drop(columns="run_id") for root in (whole, crashed))
        keys = [c for c in a.columns if c not in ("value",)]
        a, b = (t.sort_values(keys).reset_index(drop=True) for t in (a, b))
        pd.testing.assert_frame_equal(a, b)

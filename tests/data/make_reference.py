"""Reference tables for the before/after test of the layout refactor (issue 11).

`tables(model_dir, runs)` runs `scan` (with `report`'s statistics), `spike`, `weights` and `compare` through the CLI
on the tiny random Llama of `tests/tiny.py` and returns every stored table, minus run ids and wall-clock columns,
plus `"stdout"`: what the commands printed, with run ids, temporary paths and seconds masked.
The files in `reference/` were first written on commit 5e81b50 (main before the refactor) and proved the layout
refactor changed no number. Issue 9 changed numbers on purpose (matched windows, the reservoir calibration sample,
the ood_minus_id effects and the detector baselines), so they were rewritten by the issue-9 branch after its merge
of the layout; from then on they guard against unintended changes:

    cd <repo> && PYTHONPATH=$PWD:$PWD/tests OMP_NUM_THREADS=1 python tests/data/make_reference.py

`tests/test_before_after.py` runs the same commands on the current code and compares.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
TEXT = "old sailors tell long stories about cold seas, white whales and distant islands. " * 12
TIMING_COLUMNS = ["run_id", "eval_s"]

COMMANDS = {
    "scan": ["scan", "--suites", "prose,random_tokens", "--ladders", "shuffle", "--max-tokens", "24", "--window", "16",
             "--no-report"],
    "spike": ["spike", "--eval-tokens", "96", "--per-layer", "--sweep", "k=2,4", "--text", "{text}"],
    "weights": ["weights", "--sensitivity", "--per-layer", "--sparsities", "0.25,0.5", "--eval-tokens", "96",
                "--text", "{text}", "--calibration", "{text}"],
    "compare": ["compare", "--eval-tokens", "96", "--seq-len", "48", "--group-size", "16", "--teal", "0.5",
                "--spike-k", "3", "--text", "{text}", "--calibration", "{text}"],
}


def tables(model_dir: Path) -> dict[str, pd.DataFrame]:
    """{"<command>.<table>": frame} for the four commands (and `report` on the scan), each in its own run store.

    The stores lie in a fresh ``/tmp/tmpXXXXXXXX`` folder: printed paths have the same length on every run, so
    rich wraps the printed lines at the same places."""
    from typer.testing import CliRunner

    from sparsescope.cli import app

    runs = Path(tempfile.mkdtemp())
    text = runs / "text.txt"
    text.write_text(TEXT)
    runner = CliRunner()
    result, printed = {}, []
    for command, args in COMMANDS.items():
        root = runs / command
        args = [a.replace("{text}", str(text)) for a in args] + ["--model", str(model_dir), "--runs-dir", str(root)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        printed.append(res.stdout)
        if command == "scan":
            res = runner.invoke(app, ["report", "last", "--no-html", "--runs-dir", str(root)])
            assert res.exit_code == 0, res.output
            printed.append(res.stdout)
        (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
        for path in sorted(run_dir.glob("*.parquet")):
            df = pd.read_parquet(path)
            result[f"{command}.{path.stem}"] = df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).reset_index(
                drop=True)
    text = re.sub(r"\d{8}-\d{6}[-\w.]*", "RUN_ID", "\n".join(printed).replace(str(runs), "RUNS"))
    result["stdout"] = re.sub(r"\d+\.\d+ s\b", "… s", text)
    shutil.rmtree(runs)
    return result


def tiny_model_dir(path: Path) -> Path:
    """The tiny random Llama of the `model_dir` fixture, saved as a Hugging Face directory."""
    from tiny import tiny_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model_dir(Path(tmp) / "model")
        for name, df in tables(model_dir).items():
            if name == "stdout":
                (HERE / "reference" / "stdout.txt").write_text(df)
                continue
            df.to_parquet(HERE / "reference" / f"{name}.parquet", index=False)
            print(name, df.shape)

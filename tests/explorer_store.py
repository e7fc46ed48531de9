"""A run store for the explorer tests, made by REAL runs on tiny random models (the CLI, or for circuits the library
function it calls), plus a contract-shaped `plan` run, a corrupt run and a half-written one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.store import RunStore

SITES = "mlp.hook_post,attn.hook_z,ln1.hook_normalized,ln2.hook_normalized"


def _run(args: list[str], runs: Path) -> None:
    res = CliRunner().invoke(app, [*args, "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output


def build(runs: Path, model_dir: Path, other_model_dir: Path) -> dict[str, str]:
    """Fill `runs`; returns {role: run_id}."""
    m = ["--model", str(model_dir)]
    _run(["scan", *m, "--suites", "prose,random_tokens,multilingual", "--ladders", "shuffle", "--max-tokens", "16",
          "--window", "8", "--sites", SITES, "--no-report"], runs)
    _run(["spike", *m, "--eval-tokens", "32", "--per-layer", "--sweep", "k=2,3"], runs)
    _run(["weights", *m, "--sensitivity", "--per-layer", "--methods", "magnitude", "--sparsities", "0.5",
          "--nm", "none", "--eval-tokens", "32"], runs)
    _run(["compare", *m, "--eval-tokens", "32", "--seq-len", "32", "--group-size", "16", "--teal", "0.5",
          "--spike-k", "3", "--no-compositions"], runs)
    _run(["scan", "--model", str(other_model_dir), "--suites", "prose,random_tokens", "--max-tokens", "16",
          "--window", "8", "--sites", "mlp.hook_post", "--no-report"], runs)
    _run(["sae", "train", *m, "--site", "blocks.1.mlp.hook_post", "--k", "4", "--d-sae", "32", "--train-tokens", "512",
          "--batch-size", "128", "--cache-tokens", "600", "--context", "32", "--suites", "prose,random_tokens",
          "--max-prompts", "6", "--n-boot", "20", "--heldout-tokens", "256", "--inspect-tokens", "600"], runs)
    _circuits(runs, model_dir)
    store = RunStore(runs)
    ids = {r.kind + ("_other" if r.kind == "scan" and "qwen" in r.run_id else ""): r.run_id for r in store.runs()}
    model = store.open(ids["scan"]).manifest["model"]
    _plan_run(store, model)
    # A damaged copy of the scan (a table cut short) and a run whose writer died half-way.
    corrupt = runs / f"{ids['scan']}-corrupt"
    shutil.copytree(runs / ids["scan"], corrupt)
    (corrupt / "activations.parquet").write_bytes(b"PAR1 cut short")
    half = store.create({"kind": "scan", "model": model}, run_id="half-written-scan")
    half.manifest["pid"] = 2**22 + 12345  # no such process: the writer is gone
    half._save()
    ids |= {"corrupt": corrupt.name, "half": half.run_id}
    return ids


def _circuits(runs: Path, model_dir: Path) -> None:
    """A real `circuits compare` run (dense and 50 % magnitude-pruned circuits of two tasks, their overlap) through
    the library function the command calls. The tiny random model does every task at chance, which the command
    refuses (its circuits would mean little); the refusal is switched off here, as tests/test_circuits.py does."""
    from sparsescope import workflows
    from sparsescope.circuits import tasks

    cfg = workflows.circuits_config("eap,eap_ig", n=4, steps=2, random_seeds=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.Performance, "check", lambda self: None)
        workflows.circuits_compare(RunStore(runs), str(model_dir), "induction,greater_than", cfg, sparsity=0.5,
                                   neurons=False)


def _plan_run(store: RunStore, model: str) -> None:
    """A small `plan` run in the table shape of the cross-helper contract."""
    plan = store.create({"kind": "plan", "model": model})
    rows = [{"layer": layer, "site": "mlp.W_out", "choice": choice, "params": json.dumps(params),
             "bytes_saved": saved * 1000, "time_saved_s": 0.0, "energy_saved_uJ": saved, "delta_ppl_est": dppl,
             "selected": choice == "sparse 0.5"}
            for layer in (0, 1) for choice, params, saved, dppl in (
                ("dense", {}, 0.0, 0.0), ("sparse 0.5", {"sparsity": 0.5, "weights": "fp32"}, 0.4, 0.01),
                ("int8", {"sparsity": 0.0, "weights": "int8"}, 0.9, 0.02))]
    plan.finalize({"plan": pd.DataFrame(rows)})
    plan.write_file("plan.yaml", "name: planner\nrules:\n- lever: sparse\n  params: {sparsity: 0.5, weights: fp32}\n"
                    "  layers: [0, 1]\n  sites: [mlp.W_out]\n")

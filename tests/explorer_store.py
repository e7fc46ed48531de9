"""A run store for the explorer tests, made by REAL runs of the CLI on tiny random models (plus contract-shaped
`sae`, `circuits` and `plan` runs, whose commands are still being built), a corrupt run and a half-written one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
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
    store = RunStore(runs)
    ids = {r.kind + ("_other" if r.kind == "scan" and "qwen" in r.run_id else ""): r.run_id for r in store.runs()}
    model = store.open(ids["scan"]).manifest["model"]
    rng = np.random.default_rng(0)
    _contract_runs(store, model, rng)
    # A damaged copy of the scan (a table cut short) and a run whose writer died half-way.
    corrupt = runs / f"{ids['scan']}-corrupt"
    shutil.copytree(runs / ids["scan"], corrupt)
    (corrupt / "activations.parquet").write_bytes(b"PAR1 cut short")
    half = store.create({"kind": "scan", "model": model}, run_id="half-written-scan")
    half.manifest["pid"] = 2**22 + 12345  # no such process: the writer is gone
    half._save()
    ids |= {"corrupt": corrupt.name, "half": half.run_id}
    return ids


def _contract_runs(store: RunStore, model: str, rng: np.random.Generator) -> None:
    """Small `sae`, `circuits` and `plan` runs in the table shapes of the cross-helper contracts."""
    sae = store.create({"kind": "sae", "model": model})
    feats = np.arange(16)
    sae.finalize({
        "sae_metrics": pd.DataFrame({"site": "blocks.1.mlp.hook_post", "architecture": ["topk", "relu"],
                                     "d_in": 64, "d_sae": 16, "k": [4, 0], "split": "id", "family": "prose",
                                     "n_tokens": 512, "l0": [4.0, 6.5], "dead_frac": [0.0, 0.125],
                                     "dense_frac": 0.0, "explained_variance": [0.71, 0.64], "mse": [0.3, 0.4],
                                     "cosine": [0.85, 0.8], "ce_loss_recovered": [0.9, 0.8], "kl_score": [0.9, 0.8]}),
        "sae_features": pd.concat([pd.DataFrame({"site": "blocks.1.mlp.hook_post", "feature": feats, "split": s,
                                                 "family": f, "density": rng.uniform(0.001, 0.3, 16),
                                                 "mean_act": rng.uniform(0, 2, 16)})
                                   for s, f in (("id", "prose"), ("ood", "random_tokens"))]),
        "sae_contexts": pd.DataFrame({"site": "blocks.1.mlp.hook_post", "feature": np.repeat(feats, 2),
                                      "rank": np.tile([0, 1], 16), "activation": rng.uniform(1, 3, 32),
                                      "text": "the cat «sat» on the mat", "prompt_id": "p0", "position": 2}),
        "sae_logits": pd.DataFrame({"site": "blocks.1.mlp.hook_post", "feature": np.repeat(feats, 2),
                                    "rank": 0, "direction": np.tile(["+", "-"], 16), "token": np.tile(["a", "b"], 16),
                                    "effect": np.tile([0.5, -0.4], 16)}),
    })
    circ = store.create({"kind": "circuits", "model": model})
    layers, idx = np.meshgrid(range(2), range(4))
    circ.finalize({
        "tasks": pd.DataFrame({"task": ["copy", "count"], "n_prompts": 20, "accuracy": [0.9, 0.3],
                               "chance": [0.1, 0.25], "logit_diff": [2.1, 0.2], "at_chance": [False, True]}),
        "effects": pd.DataFrame({"task": "copy", "method": "ablation", "layer": layers.ravel(), "kind": "head",
                                 "index": idx.ravel(), "effect": rng.normal(size=8)}),
        "faithfulness": pd.DataFrame({"task": "copy", "method": "ablation", "size_frac": [0.1, 0.3, 1.0],
                                      "faithfulness": [0.4, 0.8, 1.0], "n_components": [1, 3, 8]}),
        "scores": pd.DataFrame({"task": ["copy"], "method": "ablation", "cpr": 0.8, "cmd": 0.1, "necessity": 0.7,
                                "sufficiency": 0.6, "random_cpr": 0.2, "random_cmd": 0.6}),
        "circuit": pd.DataFrame({"task": "copy", "method": "ablation", "layer": [0, 1], "kind": "head",
                                 "index": [1, 3], "score": [0.5, 0.4]}),
        "overlap": pd.DataFrame({"task_a": ["copy", "count"], "task_b": ["count", "copy"], "layer": 0,
                                 "jaccard": [0.2, 0.2]}),
    })
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

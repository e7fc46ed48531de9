"""`sparsescope compare`: the head-to-head of quantization, activation sparsity and spiking."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import (
    app, out, RUNS_DIR, MODEL, friendly, load, _floats, _evaluations, _note, _show, _frame_table,
)


@app.command()
@friendly
def compare(
    model: str = MODEL,
    eval_tokens: int = typer.Option(1024, help="Held-out tokens per evaluation (every configuration)."),
    seq_len: int = typer.Option(256, help="Tokens per evaluated chunk."),
    group_size: int = typer.Option(64, help="Inputs per scale for group quantization (SmolLM2: 64 or 32)."),
    teal: str = typer.Option("0.25,0.5,0.7", help="TEAL activation sparsities."),
    spike_k: str = typer.Option("2,3,4", help="Spiking thresholds k (v_th = mean|x|/k)."),
    coding: str = typer.Option("bitwise", help="Spike coding: binary, ternary or bitwise."),
    compositions: bool = typer.Option(True, help="Also int8 weights + spiking and int4 + TEAL."),
    text: str = typer.Option("heldout", help="Evaluation text: 'heldout' or a UTF-8 file."),
    calibration: str = typer.Option("calibration", help="Calibration text for TEAL thresholds."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Head-to-head on one footing: dense, weight quantization, TEAL, spiking and compositions — quality vs energy."""
    import pandas as pd

    from sparsescope import __version__
    from sparsescope.harvest import compare as cmp
    from sparsescope.probes import load_text
    from sparsescope.spiking.convert import SpikeConfig
    from sparsescope.store import RunStore

    cfg = cmp.CompareConfig(eval_tokens=eval_tokens, seq_len=seq_len, group_size=group_size,
                            teal=tuple(_floats(teal, "--teal")), spike_k=tuple(_floats(spike_k, "--spike-k")),
                            spike_coding=coding, compositions=compositions)
    for k in cfg.spike_k:
        SpikeConfig(k=k, coding=coding)
    store = RunStore(runs_dir)
    store.check_writable()
    texts = load_text(text), load_text(calibration)
    start = time.perf_counter()
    lm = load(model)
    cmp.check(lm, cfg)
    _note(lm)
    with _evaluations(cmp.n_steps(cfg), "compare") as bar:
        task = bar.add_task("compare", total=cmp.n_steps(cfg), label="")
        table = cmp.compare(lm, texts[0], texts[1], cfg, lambda label: bar.update(task, advance=1, label=label))
    seconds = time.perf_counter() - start
    manifest = {"kind": "compare", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "seconds": seconds,
                "config": {"model": model, "eval_tokens": eval_tokens, "seq_len": seq_len, "group_size": group_size,
                           "teal": list(cfg.teal), "spike_k": list(cfg.spike_k), "coding": coding,
                           "compositions": compositions, "text": text, "calibration": calibration}}
    run = store.create(manifest)
    run.finalize({"compare": table.assign(run_id=run.run_id)})
    path = run.write_file("compare.html", cmp.page(run.manifest, table))
    shown = pd.DataFrame({"method": table["method"], "config": table["config"], "ppl": table["ppl"],
                          "Δppl": table["delta_ppl"], "KL": table["kl"], "bits/w": table["bits_per_weight"],
                          "density": table["input_density"], "MB/tok": table["bytes_per_token"] / 1e6,
                          "Mops/tok": table["ops_per_token"] / 1e6, "mJ/tok": table["energy_uJ_per_token"] / 1e3,
                          "compute mJ": table["energy_compute_uJ_per_token"] / 1e3})
    _show(_frame_table(shown.set_index(["method", "config"]),
                       f"{lm.name}: head-to-head on {table['n_tokens'].iloc[0]} held-out tokens (per token, "
                       "block linears; comparator = the spiking row's layer on quantized activations)"))
    _note(lm)
    out.print(f"{seconds:.1f} s; table → {run.path}; page: {path}")

"""`sparsescope compare`: the head-to-head of quantization, activation sparsity and spiking."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import DEVICE, DTYPE, RUNS_DIR, MODEL, Bar, app, friendly, load, note, out, show


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
    device: str = DEVICE,
    dtype: str = DTYPE,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Head-to-head on one footing: dense, weight quantization, TEAL, spiking and compositions — quality vs energy."""
    from sparsescope import workflows
    from sparsescope.show.terminal import compare_table
    from sparsescope.store import RunStore

    with Bar("compare", "evaluations") as bar:
        run, table, seconds = workflows.compare(RunStore(runs_dir), model, eval_tokens, seq_len, group_size, teal,
                                                spike_k, coding, compositions, text, calibration, device, dtype,
                                                load=load, progress=bar)
    note(run.manifest["weights_note"])
    show(compare_table(run.manifest["model"], table))
    note(run.manifest["weights_note"])
    out.print(f"{seconds:.1f} s; table → {run.path}; page: {run.path / 'compare.html'}")

"""`sparsescope weights`: weight statistics and pruning sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import DEVICE, DTYPE, RUNS_DIR, MODEL, Bar, app, friendly, load, note, out, show


@app.command()
@friendly
def weights(
    model: str = MODEL,
    metric: str = typer.Option("near_zero_frac@0.1", help="Statistic shown per layer × weight site."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Also measure Δppl against pruning sparsity "
                                                                  "(whole model) and the essential-sparsity knee."),
    per_layer: bool = typer.Option(False, "--per-layer", help="With --sensitivity: also prune one layer at a time "
                                                              "(layers × methods × sparsities evaluations: slow)."),
    methods: str = typer.Option("magnitude,wanda,random", help="Pruning methods: magnitude, wanda, random, global."),
    sparsities: str = typer.Option("0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7", help="Sparsities of the curves."),
    nm: str = typer.Option("2:4", help="N:M pattern evaluated per method ('none' to skip)."),
    layers: Optional[str] = typer.Option(None, help="Layers for --per-layer, e.g. 0,5,10-12 (default: all)."),
    tolerance: float = typer.Option(0.01, help="Essential sparsity: the largest sparsity with Δppl/ppl ≤ this."),
    eval_tokens: int = typer.Option(1024, help="Held-out tokens per evaluation."),
    text: str = typer.Option("heldout", help="Evaluation text: 'heldout' or a UTF-8 file."),
    calibration: str = typer.Option("calibration", help="Wanda's calibration text: 'calibration' or a UTF-8 file."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Weight statistics per layer × weight site; with --sensitivity, pruning curves and the essential sparsity.

    Quantization (int8/int4/ternary, activations) and TEAL are measured by `sparsescope compare`.
    """
    from sparsescope import workflows
    from sparsescope.show.terminal import weights_tables
    from sparsescope.store import RunStore

    with Bar("prune", "evaluations") as bar:
        run, tables, dense_ppl, n_tokens, seconds = workflows.weights(
            RunStore(runs_dir), model, metric, sensitivity, per_layer, methods, sparsities, nm, layers, tolerance,
            eval_tokens, text, calibration, device, dtype, load=load, progress=bar)
    note(run.manifest["weights_note"])
    for table in weights_tables(run.manifest["model"], tables, metric, tolerance, dense_ppl, n_tokens):
        show(table)
    note(run.manifest["weights_note"])
    out.print(f"{seconds:.1f} s; tables {', '.join(tables)} → {run.path}; page: {run.path / 'weights.html'}")

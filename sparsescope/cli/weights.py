"""`sparsescope weights`: weight statistics and pruning sensitivity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import (
    app, out, RUNS_DIR, MODEL, friendly, split_list, parse_layers, load, _floats, _evaluations, _note, _show,
    _frame_table,
)
from sparsescope.errors import UserError


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
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Weight statistics per layer × weight site; with --sensitivity, pruning curves and the essential sparsity.

    Quantization (int8/int4/ternary, activations) and TEAL are measured by `sparsescope compare`.
    """
    from sparsescope import __version__
    from sparsescope.eval import Evaluator
    from sparsescope.probes import load_text
    from sparsescope.store import RunStore
    from sparsescope.record.calibration import calibrate
    from sparsescope.weights import sensitivity as sens
    from sparsescope.weights.study import check_metric, grid, page, stats_table

    check_metric(metric)
    if per_layer and not sensitivity:
        raise UserError("--per-layer measures pruning sensitivity one layer at a time; add --sensitivity")
    cfg = sens.SensitivityConfig(methods=tuple(split_list(methods) or ()),
                                 sparsities=tuple(_floats(sparsities, "--sparsities")),
                                 nm=None if nm.lower() == "none" else nm, per_layer=per_layer,
                                 layers=parse_layers(layers), tolerance=tolerance)
    store = RunStore(runs_dir)
    store.check_writable()
    texts = (load_text(text), load_text(calibration)) if sensitivity else None
    start = time.perf_counter()
    lm = load(model)
    _note(lm)
    tables = {"weights": stats_table(lm)}
    _show(_frame_table(grid(tables["weights"], metric), f"{lm.name}: {metric} per layer × weight site"))
    if sensitivity:
        evaluator = Evaluator(lm, texts[0], max_tokens=eval_tokens)
        calib = calibrate(lm, texts[1]) if "wanda" in cfg.methods else None
        n = len(sens.plans(lm, cfg))
        with _evaluations(n, "prune") as bar:
            task = bar.add_task("prune", total=n, label="")
            tables["sensitivity"] = sens.sensitivity(lm, evaluator, cfg, calib,
                                                     lambda label: bar.update(task, advance=1, label=label))
        tables["knees"] = sens.knees(tables["sensitivity"], tolerance)
        whole = tables["sensitivity"][tables["sensitivity"]["layer"] == sens.ALL_LAYERS]
        _show(_frame_table(whole.pivot(index="config", columns="method", values="rel_delta_ppl"),
                           f"Δppl / dense ppl {evaluator.dense_ppl:.3f} (whole model, {evaluator.n_tokens} tokens)"))
        _show(_frame_table(tables["knees"].set_index(["method", "layer"]),
                           f"essential sparsity (largest with Δppl/ppl ≤ {tolerance:.1%})"))
    seconds = time.perf_counter() - start
    manifest = {"kind": "weights", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "seconds": seconds,
                "config": {"model": model, "metric": metric, "sensitivity": sensitivity, "methods": list(cfg.methods),
                           "sparsities": list(cfg.sparsities), "nm": cfg.nm, "per_layer": per_layer, "layers": layers,
                           "tolerance": tolerance, "eval_tokens": eval_tokens, "text": text,
                           "calibration": calibration}}
    run = store.create(manifest)
    run.finalize({name: df.assign(run_id=run.run_id) for name, df in tables.items()})
    path = run.write_file("weights.html", page(run.manifest, tables, metric, tolerance))
    _note(lm)
    out.print(f"{seconds:.1f} s; tables {', '.join(tables)} → {run.path}; page: {path}")

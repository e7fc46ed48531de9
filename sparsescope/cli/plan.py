"""`sparsescope plan`: choose per linear among dense / sparse / int8 / int8 + sparse under a perplexity budget."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import RUNS_DIR, MODEL, Bar, app, friendly, load, note, out, show


@app.command("plan")
@friendly
def plan_cmd(
    model: str = MODEL,
    budget: str = typer.Option("5%", help="Allowed perplexity increase, measured on held-out text (5% or 0.05)."),
    sparsities: str = typer.Option("0.3,0.5,0.7", help="Activation sparsities offered per linear."),
    int8: bool = typer.Option(True, help="Also offer int8 weights (alone and with sparsity) and an int8 LM head."),
    eval_tokens: int = typer.Option(1024, help="Held-out tokens per measured evaluation."),
    rounds: int = typer.Option(4, help="Measured re-solves per planner."),
    teal: bool = typer.Option(True, help="Also plan TEAL's greedy allocation (and ours without int8) to compare."),
    apply: bool = typer.Option(False, "--apply", help="Then measure the plan's decode speed in the lean loop."),
    tokens: int = typer.Option(32, help="--apply: tokens decoded per repeat."),
    repeats: int = typer.Option(3, help="--apply: interleaved repeats (medians)."),
    output: Optional[Path] = typer.Option(None, "--out", help="Also write the plan YAML here."),
    text: str = typer.Option("heldout", help="Evaluation text: 'heldout' or a UTF-8 file."),
    calibration: str = typer.Option("calibration", help="Calibration text (TEAL thresholds, quality estimates)."),
    cpu_time: bool = typer.Option(False, help="Time by this process's CPU time (OMP_NUM_THREADS=1)."),
    pricing: str = typer.Option("loop", help="loop: time each choice in the fused decode loop; kernels: alone."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Harvest plan: per linear dense / sparse / int8 / int8+sparse, maximising measured time saved in a budget."""
    from sparsescope import workflows
    from sparsescope.show.terminal import plan_tables
    from sparsescope.store import RunStore

    with Bar("plan", "steps") as bar:
        run, result, tables = workflows.plan(RunStore(runs_dir), model, budget, sparsities, int8, eval_tokens, rounds,
                                             teal, apply, tokens, repeats, output, text, calibration, cpu_time,
                                             load=load, progress=bar, pricing=pricing)
    note(run.manifest["weights_note"])
    for table in plan_tables(run.manifest["model"], result, tables.get("decode")):
        show(table)
    out.print(f"plan → {run.path / 'plan.yaml'}{f' and {output}' if output else ''}; tables → {run.path}")

"""`sparsescope plan`: choose per linear among dense / sparse / int8 / int8 + sparse under a perplexity budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import app, console, out, RUNS_DIR, MODEL, friendly, load, _floats, _note, _show, \
    _frame_table
from sparsescope.errors import UserError


def parse_budget(value: str) -> float:
    """``"5%"`` → 0.05, ``"0.05"`` → 0.05; refuses negatives and non-numbers."""
    text = value.strip()
    try:
        budget = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"bad --budget {value!r}; write a relative perplexity increase like 5% or 0.05") from None
    if not budget >= 0:
        raise UserError(f"--budget {value!r} is negative; a budget is an allowed perplexity increase ≥ 0, e.g. 5%")
    return budget


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
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Harvest plan: per linear dense / sparse / int8 / int8+sparse, maximising measured time saved in a budget."""
    from sparsescope import __version__
    from sparsescope.harvest import planner as pl
    from sparsescope.probes import load_text
    from sparsescope.store import RunStore

    cfg = pl.PlannerConfig(budget=parse_budget(budget), sparsities=tuple(_floats(sparsities, "--sparsities")),
                           int8=int8, eval_tokens=eval_tokens, rounds=rounds, compare_teal=teal)
    store = RunStore(runs_dir)
    store.check_writable()
    texts = load_text(text), load_text(calibration)
    start = time.perf_counter()
    lm = load(model)
    _note(lm)
    with console.status("planning") as st:
        result = pl.plan(lm, texts[0], texts[1], cfg, lambda label: st.update(f"planning: {label}"))
    manifest = {"kind": "plan", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "seconds": time.perf_counter() - start, "notes": result.plan.notes,
                "config": {"model": model, "budget": cfg.budget, "sparsities": list(cfg.sparsities), "int8": int8,
                           "eval_tokens": eval_tokens, "rounds": rounds, "teal": teal, "text": text,
                           "calibration": calibration}}
    run = store.create(manifest)
    tables = {"plan": result.table, "comparison": result.comparison, "rounds": result.rounds}
    plan_path = run.path / "plan.yaml"
    result.plan.to_yaml(plan_path)
    if output is not None:
        result.plan.to_yaml(output)
    if apply:
        with console.status("decode: dense vs planned, lean loop") as st:
            tables["decode"] = pl.decode_check(lm, result.plan, texts[0], texts[1], tokens, repeats, cfg,
                                               progress=lambda label: st.update(f"decode: {label}"))
    run.finalize({name: t.assign(run_id=run.run_id) for name, t in tables.items()})
    chosen = result.table[result.table["selected"]]
    counts = chosen.groupby(["site", "choice"]).size().rename("linears").to_frame()
    _show(_frame_table(counts, f"{lm.name}: chosen per weight site (budget +{cfg.budget:.1%} perplexity)"))
    _show(_frame_table(result.comparison.set_index("planner"),
                       "planners at the same budget (time saved: predicted from the kernel timings, per token)"))
    n = result.plan.notes
    out.print(f"dense ppl {n['dense_ppl']:.3f}; planned ppl {n['measured_ppl']:.3f} "
              f"({n['measured_rel_delta_ppl']:+.2%}, budget {cfg.budget:.1%}); LM head: {result.plan.lm_head}")
    if apply:
        d = tables["decode"].set_index("config")[["ms_per_token", "tokens_per_s", "speedup", "rel_delta_ppl"]]
        _show(_frame_table(d, "decode, lean loop (speed-up vs the faster dense)"))
    out.print(f"plan → {plan_path}{f' and {output}' if output else ''}; tables → {run.path}")

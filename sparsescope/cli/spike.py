"""`sparsescope spike`: spiking conversion study."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsescope.cli._common import app, console, out, RUNS_DIR, MODEL, friendly, split_list, parse_layers, load
from sparsescope.errors import UserError


@app.command()
@friendly
def spike(
    model: str = MODEL,
    plan: Optional[Path] = typer.Option(None, help="YAML plan of 'spike' rules (per-layer k, T, coding, ...) "
                                                   "instead of the lever options below."),
    k: Optional[float] = typer.Option(None, help="Adaptive threshold v_th = mean|x|/k (default 3)."),
    coding: Optional[str] = typer.Option(None, help="binary, ternary or bitwise (default bitwise; if/lif: ternary)."),
    neuron: Optional[str] = typer.Option(None, help="adaptive (integer spikes, default), if or lif (rate coding)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-T", help="IF/LIF rate window in steps (default 8)."),
    max_steps: Optional[int] = typer.Option(None, help="Adaptive: cap on steps per token (clips large counts)."),
    wta: Optional[int] = typer.Option(None, help="Adaptive: keep this many spikes per token per step."),
    layers: Optional[str] = typer.Option(None, help="Layers to convert, e.g. 0,5,10-12 (default: all)."),
    sites: Optional[str] = typer.Option(None, help="Weight sites, e.g. mlp.W_out,attn.W_O (default: all linears)."),
    eval_tokens: int = typer.Option(1024, help="Held-out tokens per evaluation."),
    text: str = typer.Option("heldout", help="Evaluation text: 'heldout' or a UTF-8 file."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also convert each layer alone and evaluate it "
                                                              "(one evaluation per layer)."),
    sweep: Optional[str] = typer.Option(None, help="Sweep one parameter, e.g. k=2,2.5,3,3.5,4."),
    energy: str = typer.Option("fp32", help="Energy constants and bit widths: fp32, fp16 or int8."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Convert linears to spiking inputs; measure spike sparsity, SOPs, energy (vs dense and quantized) and Δppl."""
    from sparsescope import __version__
    from sparsescope.probes import load_text
    from sparsescope.spiking.convert import spike_plan
    from sparsescope.spiking.study import StudyConfig, n_evaluations, parse_sweep, plan_layers, run_study, with_param
    from sparsescope.store import RunStore

    params = {name: v for name, v in {"k": k, "coding": coding, "neuron": neuron, "T": steps,
                                      "max_steps": max_steps, "wta": wta}.items() if v is not None}
    if plan and (layers or sites):
        raise UserError("--layers/--sites do not combine with --plan; put layers and sites in the plan's rules")
    the_plan = spike_plan(plan, **params) if plan else spike_plan(layers=parse_layers(layers),
                                                                   sites=split_list(sites), **params)
    config = StudyConfig(eval_tokens=eval_tokens, per_layer=per_layer, sweep=parse_sweep(sweep) if sweep else None,
                         energy=energy)
    for value in config.sweep[1] if config.sweep else []:
        with_param(the_plan, config.sweep[0], value)
    store = RunStore(runs_dir)
    store.check_writable()
    texts = load_text(text)
    lm = load(model)
    total = n_evaluations(plan_layers(lm, the_plan), config)
    columns = (TextColumn("[bold]spike"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
               TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("spike", total=total, label="")
        result = run_study(lm, the_plan, texts, config,
                           progress=lambda label: bar.update(task, advance=1, label=f"done: {label}"))
    manifest = {"kind": "spike", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "timings": result.timings,
                "config": {"model": model, "plan": the_plan.to_dict(), "eval_tokens": eval_tokens, "text": text,
                           "per_layer": per_layer, "sweep": sweep, "energy": energy}}
    run = store.create(manifest)
    run.finalize({name: df.assign(run_id=run.run_id) for name, df in result.tables.items()})
    _print_spike(result, run)


def _print_spike(result, run) -> None:
    from rich.table import Table

    table = Table("layer", "sparsity", "s=0", "T", "SOPs M", "SOP/MAC", "save", "save+mem", "Q/S+mem", "wins",
                  "Δppl", title=f"{run.run_id}: spiking per layer ({run.manifest['config']['energy']} energy)",
                  caption="sparsity: empty spike slots; s=0: silent channels; T: mean steps per token; save: energy "
                          "saved vs dense, compute only / with memory traffic; Q/S+mem: quantized comparator ÷ "
                          "spiking energy with memory (> 1: spiking wins); Δppl: that layer converted alone")
    for r in result.layers.itertuples():
        table.add_row("all" if r.layer == -1 else str(r.layer), f"{r.spike_sparsity:.1%}", f"{r.zero_frac:.1%}",
                      f"{r.steps:.2f}", f"{r.sops / 1e6:.2f}", f"{r.sops / r.macs:.2f}", f"{r.saving_compute:.1%}",
                      f"{r.saving_total:.1%}", f"{r.quantized_over_spiking:.4f}",
                      "total" if r.wins_on_total else "compute" if r.wins_on_compute else "no",
                      "" if r.delta_ppl != r.delta_ppl else f"{r.delta_ppl:+.3f}")
    out.print(table)
    q = result.tables["quality"].set_index(["scope", "metric"])["value"]
    t = result.timings
    out.print(f"whole model: ppl {q['dense', 'ppl']:.3f} → {q['model', 'ppl']:.3f} "
              f"(Δ {q['model', 'delta_ppl']:+.3f}), "
              f"KL {q['model', 'kl']:.3g} nats/token; conversion {t['convert_s']:.3f} s, "
              f"evaluation {t['dense_eval_s']:.2f} s dense vs {t['spike_eval_s']:.2f} s spiking")
    if "sweep" in result.tables:
        sw = result.tables["sweep"].pivot_table(index="setting", columns="metric", values="value")
        param = result.tables["sweep"]["param"].iloc[0]
        sweep_table = Table(param, "spike sparsity", "s = 0", "steps", "Δppl", "KL", title="sweep")
        for setting, r in sw.iterrows():
            sweep_table.add_row(f"{setting:g}", f"{r.spike_sparsity:.1%}", f"{r.zero_frac:.1%}", f"{r.steps:.2f}",
                                f"{r.delta_ppl:+.3f}", f"{r.kl:.3g}")
        out.print(sweep_table)
    out.print(f"tables {', '.join(result.tables)} → {run.path}")

"""`sparsescope spike`: spiking conversion study."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import DEVICE, DTYPE, RUNS_DIR, MODEL, Bar, app, friendly, load, out


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
    device: str = DEVICE,
    dtype: str = DTYPE,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Convert linears to spiking inputs; measure spike sparsity, SOPs, energy (vs dense and quantized) and Δppl."""
    from sparsescope import workflows
    from sparsescope.show.terminal import print_spike
    from sparsescope.store import RunStore

    with Bar("spike", "evaluations", transient=True) as bar:
        run, result = workflows.spike(RunStore(runs_dir), model, plan, layers, sites, eval_tokens, text, per_layer,
                                      sweep, energy, device, dtype, load=load, progress=bar, k=k, coding=coding,
                                      neuron=neuron, T=steps, max_steps=max_steps, wta=wta)
    print_spike(result, run.run_id, energy, run.path, out)

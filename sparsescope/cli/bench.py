"""`sparsescope bench` and `models`: side-by-side benchmarks and the embedded model list."""

from __future__ import annotations

from typing import Optional

import typer

from sparsescope.cli._common import app, console, out, MODEL, friendly, load
from sparsescope.errors import UserError


@app.command()
@friendly
def bench(
    what: str = typer.Argument("all", help="record | memory | load | all"),
    model: str = MODEL,
    suite: str = typer.Option("prose", help="Suite whose prompts are recorded."),
    repeats: int = typer.Option(3, help="Repeats per side (medians are reported)."),
    prompts: Optional[int] = typer.Option(None, help="Record only the first N prompts of the suite (default: all)."),
    torch_path: bool = typer.Option(False, help="Also time all metrics through the pure-torch path (slow)."),
):
    """Side-by-side benchmarks printed as ratios: recording overhead, memory vs tokens, cached vs GGUF load."""
    from sparsescope import bench as b

    if what not in ("record", "memory", "load", "all"):
        raise UserError(f"unknown benchmark {what!r}; choose record, memory, load or all")
    if what in ("record", "all"):
        with console.status("recording overhead: plain forward vs recording, interleaved"):
            r = b.record_overhead(model, suite, repeats, n_prompts=prompts, torch_path=torch_path)
        out.print(f"recording overhead ({r['tokens']} tokens, {r['sites']} sites, medians of {repeats}, "
                  f"stats kernel {'on' if r['kernel'] else 'OFF (torch path)'}, "
                  f"load average {r['load'][0]:.2f} → {r['load'][1]:.2f}):")
        for name, sec in r["seconds"].items():
            ratio = f"  {r['ratio'][name]:.2f}× plain" if name in r["ratio"] else ""
            out.print(f"  {name:>24}: {sec:7.2f} s  {r['tokens'] / sec:6.0f} tok/s{ratio}")
    if what in ("memory", "all"):
        with console.status("memory: recording 1× vs 10× the tokens per prompt in fresh processes"):
            m = b.memory(model, suite)
        out.print(f"recorder memory, 10 prompts, all default metrics: 1× ({m['1x']['tokens']} tok) vs "
                  f"{m['factor']}× ({m['10x']['tokens']} tok)")
        for key, label in (("state_mb", "streaming state"), ("python_peak_mb", "python peak (tracemalloc)"),
                           ("rss_growth_mb", "RSS growth after warm-up")):
            out.print(f"  {label:>26}: {m['1x'][key]:8.2f} MB vs {m['10x'][key]:8.2f} MB  (×{m['ratio'][key]:.2f})")
    if what in ("load", "all"):
        with console.status("load time: GGUF dequantisation into an empty cache vs cached loads"):
            lt = b.load_time(model)
        out.print(f"model load: first (GGUF) {lt['first_s']:.1f} s, cached {lt['cached_s']:.2f} s: "
                  f"{lt['ratio']:.0f}× faster cached")


@app.command()
@friendly
def models():
    """List the embedded models, whether their package is installed and whether their cache is built."""
    from rich.table import Table

    from sparsescope.models import available_models

    table = Table("name", "title", "installed", "cached", "cache dir / install")
    for m in available_models():
        table.add_row(m["name"], m["title"], str(m["installed"]), str(m["cached"]),
                      m["cache_dir"] if m["installed"] else m["install"])
    out.print(table)
    out.print("Also accepted by --model: a local Hugging Face model directory, or a hub id when the hub is reachable.")

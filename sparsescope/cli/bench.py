"""`sparsescope bench` and `models`: side-by-side benchmarks and the embedded model list."""

from __future__ import annotations


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
):
    """Side-by-side benchmarks printed as ratios: recording overhead, memory vs tokens, cached vs GGUF load."""
    from sparsescope import bench as b

    if what not in ("record", "memory", "load", "all"):
        raise UserError(f"unknown benchmark {what!r}; choose record, memory, load or all")
    if what in ("record", "all"):
        with console.status("recording overhead: plain forward vs recording, interleaved"):
            r = b.record_overhead(model, suite, repeats)
        out.print(f"recording overhead ({r['tokens']} tokens, {r['sites']} sites, medians of {repeats}):")
        for name, sec in r["seconds"].items():
            ratio = f"  {r['ratio'][name]:.2f}× plain" if name in r["ratio"] else ""
            out.print(f"  {name:>16}: {sec:7.2f} s  {r['tokens'] / sec:6.0f} tok/s{ratio}")
    if what in ("memory", "all"):
        with console.status("memory: recording 1× vs 10× the tokens in fresh processes"):
            m = b.memory(model, suite)
        out.print(f"peak RSS: 1× {m['1x']['peak_rss_mb']:.0f} MB ({m['1x']['tokens']} tok), "
                  f"10× {m['10x']['peak_rss_mb']:.0f} MB ({m['10x']['tokens']} tok): ratio {m['ratio']:.3f}")
    if what in ("load", "all"):
        with console.status("load time: first load into an empty cache vs later loads"):
            lt = b.load_time(model)
        out.print(f"model load: first ({lt['first']}) {lt['first_s']:.1f} s, then {lt['cached_s']:.2f} s: "
                  f"{lt['ratio']:.1f}× faster")


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

"""`sparsescope bench` and `models`: side-by-side benchmarks and the embedded model list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import app, console, out, MODEL, RUNS_DIR, friendly, load, show
from sparsescope.errors import UserError


@app.command()
@friendly
def bench(
    what: str = typer.Argument("all", help="record | memory | load | all | kernels | decode"),
    model: str = MODEL,
    suite: str = typer.Option("prose", help="Suite whose prompts are recorded."),
    repeats: int = typer.Option(3, help="Repeats per side (medians are reported)."),
    plan: Optional[list[Path]] = typer.Option(None, help="decode: also time this plan.yaml (repeatable)."),
    sparsity: float = typer.Option(0.5, help="decode: TEAL sparsity of the uniform sparse configurations."),
    tokens: int = typer.Option(32, help="decode: tokens generated per repeat."),
    cpu_time: bool = typer.Option(False, help="kernels/decode: time by this process's CPU time (OMP_NUM_THREADS=1)."),
    threads: str = typer.Option("", help="decode: thread counts timed in turn, e.g. 2,1 (default: current)."),
    runs_dir: Optional[Path] = RUNS_DIR,
    prompts: Optional[int] = typer.Option(None, help="Record only the first N prompts of the suite (default: all)."),
    torch_path: bool = typer.Option(False, help="Also time all metrics through the pure-torch path (slow)."),
):
    """Side-by-side benchmarks printed as ratios: recording overhead, memory vs tokens, cached vs GGUF load."""
    from sparsescope import bench as b

    if what not in ("record", "memory", "load", "all", "kernels", "decode"):
        raise UserError(f"unknown benchmark {what!r}; choose record, memory, load, all, kernels or decode")
    if runs_dir is not None:  # fail before minutes of timing, not after
        from sparsescope.store import RunStore

        RunStore(runs_dir).check_writable()
    if what == "kernels":
        return _bench_kernels(repeats, runs_dir, cpu_time)
    if what == "decode":
        return _bench_decode(model, plan, sparsity, tokens, repeats, runs_dir, cpu_time, threads)
    if what in ("record", "all"):
        _bench_record(model, suite, repeats, prompts, torch_path)
    if what in ("memory", "all"):
        _bench_memory(model, suite)
    if what in ("load", "all"):
        with console.status("load time: first load into an empty cache vs later loads"):
            lt = b.load_time(model)
        out.print(f"model load: first ({lt['first']}) {lt['first_s']:.1f} s, then {lt['cached_s']:.2f} s: "
                  f"{lt['ratio']:.1f}× faster")


def _bench_record(model: str, suite: str, repeats: int, prompts: int | None, torch_path: bool) -> None:
    """Plain forward vs recording (all metrics, sort-free, optionally the torch path), interleaved (`bench record`)."""
    from sparsescope import bench as b

    with console.status("recording overhead: plain forward vs recording, interleaved"):
        r = b.record_overhead(model, suite, repeats, n_prompts=prompts, torch_path=torch_path)
    out.print(f"recording overhead ({r['tokens']} tokens, {r['sites']} sites, medians of {repeats}, "
              f"stats kernel {'on' if r['kernel'] else 'OFF (torch path)'}, "
              f"load average {r['load'][0]:.2f} → {r['load'][1]:.2f}):")
    for name, sec in r["seconds"].items():
        ratio = f"  {r['ratio'][name]:.2f}× plain" if name in r["ratio"] else ""
        out.print(f"  {name:>24}: {sec:7.2f} s  {r['tokens'] / sec:6.0f} tok/s{ratio}")


def _bench_memory(model: str, suite: str) -> None:
    """The recorder's own memory at 1× vs 10× the tokens per prompt, fresh processes (`bench memory`)."""
    from sparsescope import bench as b

    with console.status("memory: recording 1× vs 10× the tokens per prompt in fresh processes"):
        m = b.memory(model, suite)
    out.print(f"recorder memory, 10 prompts, all default metrics: 1× ({m['1x']['tokens']} tok) vs "
              f"{m['factor']}× ({m['10x']['tokens']} tok)")
    for key, label in (("state_mb", "streaming state"), ("python_peak_mb", "python peak (tracemalloc)"),
                       ("rss_growth_mb", "RSS growth after warm-up")):
        out.print(f"  {label:>26}: {m['1x'][key]:8.2f} MB vs {m['10x'][key]:8.2f} MB  (×{m['ratio'][key]:.2f})")


def _bench_kernels(repeats: int, runs_dir, cpu_time: bool) -> None:
    """Sparse GEMV vs the best dense path on SmolLM2's shapes and 4096x11008 (`bench kernels`)."""
    from sparsescope import bench as b
    from sparsescope.show.terminal import kernel_tables
    from sparsescope.store import RunStore

    with console.status("kernels: torch dense, our dense and sparse GEMVs, interleaved") as st:
        run, table = b.kernels_run(RunStore(runs_dir), max(repeats, 5), lambda label: st.update(f"kernels: {label}"),
                                   cpu_time)
    for t in kernel_tables(table):
        show(t)
    m = run.manifest
    out.print(f"load average before {m['loadavg_before'][0]:.1f}, after {m['loadavg_after'][0]:.1f} "
              f"({m['config']['threads']} threads); table → {run.path}")


def _bench_decode(model: str, plans, sparsity: float, tokens: int, repeats: int, runs_dir, cpu_time: bool,
                  threads: str) -> None:
    """Lean-loop decode tokens/s, dense vs sparse/int8/planned, with Δppl (`bench decode`)."""
    from sparsescope import bench as b
    from sparsescope.workflows import parse_floats
    from sparsescope.show.terminal import decode_table, frame_table
    from sparsescope.store import RunStore

    with console.status("decode: lean loop, configurations interleaved") as st:
        plan_files = [str(p) for p in plans or []]
        run, table, bound, parts = b.decode_run(RunStore(runs_dir), model, plan_files, sparsity, tokens,
                                                repeats, lambda label: st.update(f"decode: {label}"), cpu_time,
                                                [int(t) if t == int(t) else t
                                                 for t in parse_floats(threads, "--threads")])
    show(decode_table(model, table, f"{tokens} tokens, medians of {repeats}"))
    if len(parts):
        show(frame_table(parts.pivot(index="component", columns="config", values="ms_per_token"),
                         "where a token's time goes in the fused loop (ms per token, median over tokens)"))
    out.print(f"Amdahl: the LM head is {bound['head_fraction']:.0%} of the weight bytes per token and is not "
              f"input-sparse: activation sparsity {sparsity:.0%} on every block linear can give at most "
              f"{bound['bound_at_s']:.2f}x, any sparsity at most {bound['bound_any_s']:.2f}x (bytes-bound).")
    m = run.manifest
    out.print(f"load average before {m['loadavg_before'][0]:.1f}, after {m['loadavg_after'][0]:.1f} "
              f"({m['config']['threads']} threads); table → {run.path}")


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

"""The ``sparsescope`` command line: thin typer commands over the library, one-line errors, progress bars."""

from __future__ import annotations

import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsescope.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Record, explain and harvest sparsity in transformer language models.")
console = Console(stderr=True)
out = Console()

RUNS_DIR = typer.Option(None, "--runs-dir", envvar="SPARSESCOPE_RUNS", help="Run store root (default ./runs).")
MODEL = typer.Option("smollm2-135m", "--model", "-m", help="Embedded name, local HF directory or hub id.")


def friendly(fn):
    """Turn user errors and Ctrl-C into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = lambda msg, *a, **k: console.print(f"[yellow]warning:[/] {msg}")
                return fn(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]: finished parts are saved; resume with the same command plus --resume")
            raise typer.Exit(130) from None
        except PermissionError as e:
            console.print(f"[red]error:[/] permission denied: {e.filename}; pass --runs-dir to a writable folder",
                          soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_layers(value: Optional[str]) -> Optional[list[int]]:
    """``"0,5,10-12"`` → ``[0, 5, 10, 11, 12]``."""
    if not value:
        return None
    layers = []
    try:
        for part in value.split(","):
            lo, _, hi = part.partition("-")
            layers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UserError(f"bad --layers {value!r}; write e.g. 0,5,10-12") from None
    return layers


def token_progress(total: int, label: str) -> Progress:
    """A progress bar counting tokens, with tokens/s."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("tok"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def load(spec: str):
    from sparsescope.models import load_model

    with console.status(f"loading {spec}"):
        return load_model(spec, progress=lambda m: console.print(m))


@app.command()
@friendly
def scan(
    model: str = MODEL,
    suites: Optional[str] = typer.Option(None, help="Comma-separated bundled suite names or files (default: all)."),
    sites: Optional[str] = typer.Option(None, help="Sites, e.g. mlp.hook_post,blocks.3.hook_resid_post (default: all)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,5,10-12 (default: all)."),
    metrics: Optional[str] = typer.Option(None, help="Metrics, e.g. hoyer,near_zero_frac@0.1 (default: all)."),
    ladders: Optional[str] = typer.Option(None, help="Corruption ladders over the prose suite (levels 0/10/25/50/100), "
                                          "e.g. shuffle,replace,char_noise,base64."),
    seed: int = typer.Option(0, help="Seed of generated suites and ladders."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    max_tokens: int = typer.Option(256, help="Truncate prompts to this many tokens."),
    resume: Optional[str] = typer.Option(None, help="Finish an interrupted run: its id, or 'last'."),
    report: bool = typer.Option(True, help="Write the HTML report when done."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record per-layer, per-site sparsity over ID and OOD prompt suites and store it as a run."""
    from sparsescope import __version__
    from sparsescope.probes import CORRUPTIONS, DEFAULT_SUITES, ladder_spec, load_suites
    from sparsescope.record import RecordConfig, Recorder
    from sparsescope.record.recorder import part_key
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    store.check_writable()
    if resume:
        run = store.latest(kind="scan", status="incomplete") if resume == "last" else store.open(resume)
        if run is None:
            raise UserError("no interrupted scan to resume; start a new one without --resume")
        if run.status == "complete":
            raise UserError(f"run {run.run_id} is already complete; `sparsescope report {run.run_id}` shows it")
        cfg = run.manifest.get("config")
        if not cfg:
            raise UserError(f"run {run.run_id} has no readable manifest to resume from; start a new scan")
        model, suites, sites, layers, metrics = (cfg["model"], ",".join(cfg["suites"]), cfg["sites"], cfg["layers"],
                                                 cfg["metrics"])
        batch_size, max_tokens = cfg["batch_size"], cfg["max_tokens"]
        ladders, seed = cfg.get("ladders"), cfg.get("seed", 0)
    names = split_list(suites) or list(DEFAULT_SUITES)
    corruptions = split_list(ladders) or []
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown ladder {unknown[0]!r}; choose from {','.join(CORRUPTIONS)}")
    config = RecordConfig(sites=split_list(sites), layers=parse_layers(layers), metrics=metrics,
                          batch_size=batch_size, max_tokens=max_tokens)
    lm = load(model)
    recorder = Recorder(lm, config)  # validates sites/layers/metrics before anything is written
    suite_objs = load_suites(names + [f"ladder:{c}" for c in corruptions], tokenizer=lm.tokenizer, seed=seed)
    if not resume:
        prose = load_suites(["prose"], tokenizer=lm.tokenizer, seed=seed)[0] if corruptions else None
        manifest = {"kind": "scan", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                    "suites": names, "package_version": __version__, "seed": seed,
                    "ladders": {c: ladder_spec(prose, c, seed=seed, tokenizer=lm.tokenizer) for c in corruptions},
                    "config": {"model": model, "suites": names, "sites": sites, "layers": layers, "metrics": metrics,
                               "ladders": ladders, "seed": seed, "batch_size": batch_size, "max_tokens": max_tokens},
                    "suite_sources": {s.name: {"source": s.source, "license": s.license} for s in suite_objs}}
        run = store.create(manifest, run_id=None)
    done = run.done_parts()
    todo = [s for s in suite_objs if part_key(s) not in done]
    total = sum(len(i) for s in todo for i in recorder.tokenize([p.text for p in s.prompts]))
    console.print(f"run [bold]{run.run_id}[/]: {len(recorder.targets)} sites × {len(recorder.metrics)} metrics, "
                  f"{len(todo)} suites to record ({len(done)} already done), {total} tokens")
    start = time.perf_counter()
    with token_progress(total, "scan") as bar:
        task = bar.add_task("scan", total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            done_tok = bar.tasks[task].completed
            bar.update(task, rate=f"{done_tok / max(time.perf_counter() - start, 1e-9):.0f} tok/s")

        try:
            recorder.run(todo, run_id=run.run_id, progress=advance, on_suite=lambda key, part: run.write_part(
                key, {"activations": part.activations, "prompts": part.prompts, "neurons": part.neurons}))
        except BaseException as e:  # Ctrl-C or a failure: keep the finished suites, say how to resume
            run.mark_incomplete(f"interrupted: {type(e).__name__}")
            raise
    run.finalize()
    console.print(f"recorded in {time.perf_counter() - start:.1f} s → {run.path}")
    _report(run, html=report)


def _report(run, html: bool = True, metric: str = "hoyer") -> None:
    from sparsescope.report import print_stats, print_summary, statistics, summary_table, write_html

    acts = run.read("activations")
    print_summary(summary_table(acts, metric=metric), out, title=f"{run.run_id}: {metric}, ID vs OOD per layer")
    stats = {}
    if "prompts" in run.manifest.get("tables", {}):
        with console.status("statistics over prompts (bootstrap CIs, trends, detector)"):
            stats = statistics(run.read("prompts"))
        for name in ("effects", "trends", "detector"):
            if name in stats:
                run.write_table(name, stats[name].drop(columns=["fpr", "tpr"], errors="ignore"))
        print_stats(stats, out)
    if run.manifest.get("weights_note"):
        out.print(f"note: {run.manifest['weights_note']}")
    if html:
        path = write_html(run, metric=metric, stats=stats)
        out.print(f"report: {path}")


@app.command()
@friendly
def report(
    run_id: str = typer.Argument("last", help="Run id (prefix) or 'last'."),
    metric: str = typer.Option("hoyer", help="Metric for the summary table."),
    html: bool = typer.Option(True, help="Also write the self-contained HTML report."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Print the ID vs OOD summary of a run and write its HTML report."""
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    run = store.latest(status="complete") if run_id == "last" else store.open(run_id)
    if run is None:
        raise UserError("no complete runs yet; run `sparsescope scan` first")
    _report(run, html=html, metric=metric)


@app.command()
@friendly
def runs(runs_dir: Optional[Path] = RUNS_DIR):
    """List runs with their status (complete; running = a live process writes it; incomplete = resumable or damaged)."""
    from rich.table import Table

    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    df = store.list()
    if df.empty:
        out.print(f"no runs in {store.root}; run `sparsescope scan`")
        return
    table = Table("run_id", "kind", "status", "created", "rows", title=f"runs in {store.root}")
    counts = df.filter(regex="^n_").fillna(0).sum(axis=1).astype(int)
    for row, n in zip(df.itertuples(index=False), counts):
        table.add_row(row.run_id, str(row.kind), str(row.status), str(row.created)[:19], str(n))
    out.print(table, soft_wrap=True)


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


def _floats(value: str, option: str) -> list[float]:
    """``"0.25,0.5"`` → ``[0.25, 0.5]``; one line naming the option otherwise."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {value!r}; write numbers separated by commas, e.g. 0.25,0.5") from None


def _evaluations(total: int, label: str) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
                    TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _note(lm) -> None:
    if lm.weights_note:
        out.print(f"[bold yellow]note: {lm.weights_note}[/]", highlight=False)


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


def _show(table) -> None:
    """Print a table; a log or pipe (not a terminal) gets every column in full instead of 80 columns."""
    (out if out.is_terminal else Console(width=160)).print(table)


def _frame_table(df, title: str):
    """A rich table of a small frame (index as the first columns), numbers to 4 significant digits."""
    from rich.table import Table

    df = df.reset_index()
    table = Table(*[str(c) for c in df.columns], title=title)
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    return table


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
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Head-to-head on one footing: dense, weight quantization, TEAL, spiking and compositions — quality vs energy."""
    import pandas as pd

    from sparsescope import __version__
    from sparsescope.harvest import compare as cmp
    from sparsescope.probes import load_text
    from sparsescope.spiking.convert import SpikeConfig
    from sparsescope.store import RunStore

    cfg = cmp.CompareConfig(eval_tokens=eval_tokens, seq_len=seq_len, group_size=group_size,
                            teal=tuple(_floats(teal, "--teal")), spike_k=tuple(_floats(spike_k, "--spike-k")),
                            spike_coding=coding, compositions=compositions)
    for k in cfg.spike_k:
        SpikeConfig(k=k, coding=coding)
    store = RunStore(runs_dir)
    store.check_writable()
    texts = load_text(text), load_text(calibration)
    start = time.perf_counter()
    lm = load(model)
    cmp.check(lm, cfg)
    _note(lm)
    with _evaluations(cmp.n_steps(cfg), "compare") as bar:
        task = bar.add_task("compare", total=cmp.n_steps(cfg), label="")
        table = cmp.compare(lm, texts[0], texts[1], cfg, lambda label: bar.update(task, advance=1, label=label))
    seconds = time.perf_counter() - start
    manifest = {"kind": "compare", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "package_version": __version__, "seconds": seconds,
                "config": {"model": model, "eval_tokens": eval_tokens, "seq_len": seq_len, "group_size": group_size,
                           "teal": list(cfg.teal), "spike_k": list(cfg.spike_k), "coding": coding,
                           "compositions": compositions, "text": text, "calibration": calibration}}
    run = store.create(manifest)
    run.finalize({"compare": table.assign(run_id=run.run_id)})
    path = run.write_file("compare.html", cmp.page(run.manifest, table))
    shown = pd.DataFrame({"method": table["method"], "config": table["config"], "ppl": table["ppl"],
                          "Δppl": table["delta_ppl"], "KL": table["kl"], "bits/w": table["bits_per_weight"],
                          "density": table["input_density"], "MB/tok": table["bytes_per_token"] / 1e6,
                          "Mops/tok": table["ops_per_token"] / 1e6, "mJ/tok": table["energy_uJ_per_token"] / 1e3,
                          "compute mJ": table["energy_compute_uJ_per_token"] / 1e3})
    _show(_frame_table(shown.set_index(["method", "config"]),
                       f"{lm.name}: head-to-head on {table['n_tokens'].iloc[0]} held-out tokens (per token, "
                       "block linears; comparator = the spiking row's layer on quantized activations)"))
    _note(lm)
    out.print(f"{seconds:.1f} s; table → {run.path}; page: {path}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Whole runs, as the CLI, the app and notebooks start them: validate, load, measure, write a run to the store.

Each function takes the options of its command (strings as typed, so a run's manifest can replay them), writes one
run of its kind and returns it with what there is to show. Nothing here prints: ``announce(text)`` receives the one
line a caller may show before the long part, ``progress(n, total, note)`` is called as work advances
(``n`` tokens for a scan, one evaluation otherwise), and ``load(spec)`` loads the model (default `load_model`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from sparsescope import __version__
from sparsescope.errors import UserError
from sparsescope.models import load_model
from sparsescope.store import RunDir, RunStore

Progress = Callable[..., None]  # progress(n, total, note="")


def _quiet(*args, **kwargs) -> None:
    pass


def _manifest(kind: str, lm, **extra) -> dict:
    return {"kind": kind, "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
            "placement": lm.placement, "package_version": __version__, **extra}


def parse_device_map(value: str | None) -> str | dict | None:
    """``--device-map``: ``auto``/``balanced``/``sequential`` (accelerate), or a JSON object of module → device
    (``{"model.layers.0": 0, "lm_head": "cpu", "model.layers.9": "disk"}``)."""
    if not value:
        return None
    if value in ("auto", "balanced", "balanced_low_0", "sequential"):
        return value
    try:
        table = json.loads(value)
    except json.JSONDecodeError:
        table = None
    if not isinstance(table, dict):
        raise UserError(f"bad --device-map {value!r}; pass auto, or JSON like '{{\"model.layers.0\": 0}}'")
    return table


def _finish(store: RunStore, manifest: dict, tables: dict[str, pd.DataFrame]) -> RunDir:
    run = store.create(manifest)
    run.finalize({name: df.assign(run_id=run.run_id) for name, df in tables.items()})
    return run


# -- scan ------------------------------------------------------------------------------------------------------
@dataclass
class ScanOptions:
    """A scan as typed on the command line (kept verbatim in the manifest, so `--resume` replays it)."""

    model: str = "smollm2-135m"  # embedded name, local HF directory or hub id
    suites: str | None = None  # comma-separated bundled suite names or files; None = all bundled suites
    sites: str | None = None  # e.g. "mlp.hook_post,blocks.3.hook_resid_post"; None = every site
    layers: str | None = None  # e.g. "0,5,10-12"; None = every layer
    metrics: str | None = None  # e.g. "hoyer,near_zero_frac@0.1"; None = every metric
    ladders: str | None = None  # corruption ladders over the prose suite, e.g. "shuffle,base64"
    seed: int = 0  # seed of generated suites and ladders
    batch_size: int = 8  # prompts per forward pass
    max_tokens: int = 256  # prompts are truncated to this many tokens
    token_budget: int | None = None  # at most this many padded tokens per forward pass (prompts sorted by length)
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    dtype: str = "float32"  # weights' dtype: float32, bfloat16 or float16 (statistics are float64 regardless)
    device_map: str | None = None  # accelerate device map: "auto" or JSON {module: device | "cpu" | "disk"}
    backend: str = "hooks"  # hooks (torch hooks) or nnsight (statistics reduced inside an nnsight trace)
    remote: bool = False  # with nnsight: trace on NDIF (needs NDIF_API_KEY); only reduced statistics come back


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,"`` → ``["a", "b"]``; None or empty → None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_layers(value: str | None) -> list[int] | None:
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


def parse_floats(value: str, option: str) -> list[float]:
    """``"0.25,0.5"`` → ``[0.25, 0.5]``; one line naming the option otherwise."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {value!r}; write numbers separated by commas, e.g. 0.25,0.5") from None


def _resumed(store: RunStore, resume: str) -> tuple[RunDir, ScanOptions]:
    """The interrupted scan to finish and the options it was started with."""
    run = store.latest(kind="scan", status="incomplete") if resume == "last" else store.open(resume)
    if run is None:
        raise UserError("no interrupted scan to resume; start a new one without --resume")
    if run.status == "complete":
        raise UserError(f"run {run.run_id} is already complete; `sparsescope report {run.run_id}` shows it")
    cfg = run.manifest.get("config")
    if not cfg:
        raise UserError(f"run {run.run_id} has no readable manifest to resume from; start a new scan")
    known = {f.name for f in fields(ScanOptions)}
    return run, ScanOptions(**{k: v for k, v in cfg.items() if k in known} | {"suites": ",".join(cfg["suites"])})


def scan(store: RunStore, opts: ScanOptions, resume: str | None = None, load: Callable = load_model,
         announce: Callable[[str], None] = _quiet, progress: Progress = _quiet) -> RunDir:
    """Record a scan run (or finish the interrupted one ``resume`` names: its id or "last"), suite by suite.

    Each finished suite is written as a part at once; on any exception the run is marked incomplete and can be
    resumed. Everything the options name is validated before the first write.
    """
    from sparsescope.probes import CORRUPTIONS, DEFAULT_SUITES, ladder_spec, load_suites
    from sparsescope.record import RecordConfig, Recorder
    from sparsescope.record.recorder import BACKENDS, part_key

    store.check_writable()
    run = None
    if resume:
        run, opts = _resumed(store, resume)
    names = split_list(opts.suites) or list(DEFAULT_SUITES)
    corruptions = split_list(opts.ladders) or []
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown ladder {unknown[0]!r}; choose from {','.join(CORRUPTIONS)}")
    if opts.backend not in BACKENDS:
        raise UserError(f"unknown backend {opts.backend!r}; pass --backend {' or '.join(BACKENDS)}")
    config = RecordConfig(sites=split_list(opts.sites), layers=parse_layers(opts.layers), metrics=opts.metrics,
                          batch_size=opts.batch_size, max_tokens=opts.max_tokens, token_budget=opts.token_budget,
                          backend=opts.backend, remote=opts.remote)
    if opts.remote:
        from sparsescope.record.traced import remote_model

        if opts.backend != "nnsight":
            raise UserError("--remote runs through nnsight; add --backend nnsight")
        if opts.device_map or opts.device != "cpu" or opts.dtype != "float32":
            raise UserError("--remote runs on NDIF's GPUs in NDIF's dtype; drop --device, --dtype and --device-map")
        lm = remote_model(opts.model)
    else:
        lm = load(opts.model, device=opts.device, dtype=opts.dtype, device_map=parse_device_map(opts.device_map))
    recorder = Recorder(lm, config)  # validates sites/layers/metrics before anything is written
    suite_objs = load_suites(names + [f"ladder:{c}" for c in corruptions], tokenizer=lm.tokenizer, seed=opts.seed)
    if run is None:
        prose = load_suites(["prose"], tokenizer=lm.tokenizer, seed=opts.seed)[0] if corruptions else None
        ladders = {c: ladder_spec(prose, c, seed=opts.seed, tokenizer=lm.tokenizer) for c in corruptions}
        run = store.create(_manifest("scan", lm, suites=names, seed=opts.seed, ladders=ladders,
                                     config=asdict(opts) | {"suites": names},
                                     suite_sources={s.name: {"source": s.source, "license": s.license}
                                                    for s in suite_objs}), run_id=None)
    done = run.done_parts()
    todo = [s for s in suite_objs if part_key(s) not in done]
    ids = [recorder.tokenize([p.text for p in s.prompts]) for s in todo]
    total = sum(len(i) for suite_ids in ids for i in suite_ids)
    padded = sum(len(g) * max(len(suite_ids[i]) for i in g) for suite_ids in ids for g in recorder.groups(suite_ids))
    announce(f"run [bold]{run.run_id}[/]: {len(recorder.targets)} sites × {len(recorder.metrics)} metrics, "
             f"{len(todo)} suites to record ({len(done)} already done), {total} tokens "
             f"({opts.backend}{', remote' if opts.remote else ''} on {lm.placement.get('device')})")
    start = time.perf_counter()
    try:
        recorder.run(todo, run_id=run.run_id, progress=lambda n: progress(n, total),
                     on_suite=lambda key, part: run.write_part(
                         key, {"activations": part.activations, "prompts": part.prompts, "neurons": part.neurons}))
    except BaseException as e:  # Ctrl-C or a failure: keep the finished suites, say how to resume
        run.mark_incomplete(f"interrupted: {type(e).__name__}")
        raise
    seconds = time.perf_counter() - start
    run.manifest["throughput"] = {"tokens": total, "seconds": round(seconds, 3),
                                  "tokens_per_s": round(total / max(seconds, 1e-9), 1),
                                  "padded_tokens": padded, "padding_frac": round(1 - total / max(padded, 1), 4)}
    run.finalize()
    return run


@dataclass
class Report:
    """What `report` found in a scan run: the ID/OOD summary, the statistic tables, the HTML page (or None)."""

    run: RunDir
    metric: str
    summary: pd.DataFrame
    stats: dict[str, pd.DataFrame]
    html: Path | None


def open_run(store: RunStore, run_id: str = "last") -> RunDir:
    """A complete run by id (prefix), or the latest complete one for "last"."""
    run = store.latest(status="complete") if run_id == "last" else store.open(run_id)
    if run is None:
        raise UserError("no complete runs yet; run `sparsescope scan` first")
    return run


def report(run: RunDir, metric: str = "hoyer", html: bool = True) -> Report:
    """Summarise a scan run: ID vs OOD per layer and, with a `prompts` table, the statistics over prompts (their
    `effects`, `trends` and `detector` tables are written into the run); ``html`` also writes `report.html`."""
    from sparsescope.harvest.summary import statistics, summary_table
    from sparsescope.show.report import write_html

    summary = summary_table(run.read("activations"), metric=metric)
    stats = {}
    if "prompts" in run.manifest.get("tables", {}):
        stats = statistics(run.read("prompts"))
        for name in ("effects", "trends", "detector"):
            if name in stats:
                run.write_table(name, stats[name].drop(columns=["fpr", "tpr"], errors="ignore"))
    path = write_html(run, metric=metric, stats=stats) if html else None
    return Report(run, metric, summary, stats, path)


# -- spike -----------------------------------------------------------------------------------------------------
def spike(store: RunStore, model: str, plan: Path | None = None, layers: str | None = None, sites: str | None = None,
          eval_tokens: int = 1024, text: str = "heldout", per_layer: bool = False, sweep: str | None = None,
          energy: str = "fp32", device: str = "cpu", dtype: str = "float32", load: Callable = load_model,
          progress: Progress = _quiet, **params):
    """A spiking-conversion study run (kind `spike`); ``params`` are the spike lever's (k, coding, neuron, T, ...),
    None meaning its default. Returns ``(run, StudyResult)``."""
    from sparsescope.probes import load_text
    from sparsescope.spiking.convert import spike_plan
    from sparsescope.spiking.study import StudyConfig, n_evaluations, parse_sweep, plan_layers, run_study, with_param

    params = {name: v for name, v in params.items() if v is not None}
    if plan and (layers or sites):
        raise UserError("--layers/--sites do not combine with --plan; put layers and sites in the plan's rules")
    the_plan = spike_plan(plan, **params) if plan else spike_plan(layers=parse_layers(layers),
                                                                   sites=split_list(sites), **params)
    config = StudyConfig(eval_tokens=eval_tokens, per_layer=per_layer, sweep=parse_sweep(sweep) if sweep else None,
                         energy=energy)
    for value in config.sweep[1] if config.sweep else []:
        with_param(the_plan, config.sweep[0], value)
    store.check_writable()
    texts = load_text(text)
    lm = load(model, device=device, dtype=dtype)
    total = n_evaluations(plan_layers(lm, the_plan), config)
    result = run_study(lm, the_plan, texts, config, progress=lambda label: progress(1, total, f"done: {label}"))
    manifest = _manifest("spike", lm, timings=result.timings,
                         config={"model": model, "plan": the_plan.to_dict(), "eval_tokens": eval_tokens, "text": text,
                                 "per_layer": per_layer, "sweep": sweep, "energy": energy,
                                 "device": device, "dtype": dtype})
    return _finish(store, manifest, result.tables), result


# -- weights ---------------------------------------------------------------------------------------------------
def weights(store: RunStore, model: str, metric: str = "near_zero_frac@0.1", sensitivity: bool = False,
            per_layer: bool = False, methods: str = "magnitude,wanda,random",
            sparsities: str = "0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7", nm: str = "2:4", layers: str | None = None,
            tolerance: float = 0.01, eval_tokens: int = 1024, text: str = "heldout",
            calibration: str = "calibration", device: str = "cpu", dtype: str = "float32",
            load: Callable = load_model, progress: Progress = _quiet):
    """A weights run (kind `weights`): statistics per layer × weight site and, with ``sensitivity``, pruning curves
    and essential-sparsity knees; writes `weights.html`. Returns ``(run, tables, dense_ppl, n_tokens, seconds)``."""
    from sparsescope.eval import Evaluator
    from sparsescope.probes import load_text
    from sparsescope.record.calibration import calibrate
    from sparsescope.show.weights import weights_page
    from sparsescope.weights import sensitivity as sens
    from sparsescope.weights.study import check_metric, stats_table

    check_metric(metric)
    if per_layer and not sensitivity:
        raise UserError("--per-layer measures pruning sensitivity one layer at a time; add --sensitivity")
    cfg = sens.SensitivityConfig(methods=tuple(split_list(methods) or ()),
                                 sparsities=tuple(parse_floats(sparsities, "--sparsities")),
                                 nm=None if nm.lower() == "none" else nm, per_layer=per_layer,
                                 layers=parse_layers(layers), tolerance=tolerance)
    store.check_writable()
    texts = (load_text(text), load_text(calibration)) if sensitivity else None
    start = time.perf_counter()
    lm = load(model, device=device, dtype=dtype)
    tables = {"weights": stats_table(lm)}
    dense_ppl, n_tokens = float("nan"), 0
    if sensitivity:
        evaluator = Evaluator(lm, texts[0], max_tokens=eval_tokens)
        calib = calibrate(lm, texts[1]) if "wanda" in cfg.methods else None
        n = len(sens.plans(lm, cfg))
        tables["sensitivity"] = sens.sensitivity(lm, evaluator, cfg, calib, lambda label: progress(1, n, label))
        tables["knees"] = sens.knees(tables["sensitivity"], tolerance)
        dense_ppl, n_tokens = evaluator.dense_ppl, evaluator.n_tokens
    seconds = time.perf_counter() - start
    manifest = _manifest("weights", lm, seconds=seconds,
                         config={"model": model, "metric": metric, "sensitivity": sensitivity,
                                 "methods": list(cfg.methods), "sparsities": list(cfg.sparsities), "nm": cfg.nm,
                                 "per_layer": per_layer, "layers": layers, "tolerance": tolerance,
                                 "eval_tokens": eval_tokens, "text": text, "calibration": calibration,
                                 "device": device, "dtype": dtype})
    run = _finish(store, manifest, tables)
    run.write_file("weights.html", weights_page(run.manifest, tables, metric, tolerance))
    return run, tables, dense_ppl, n_tokens, seconds


# -- compare ---------------------------------------------------------------------------------------------------
def compare(store: RunStore, model: str, eval_tokens: int = 1024, seq_len: int = 256, group_size: int = 64,
            teal: str = "0.25,0.5,0.7", spike_k: str = "2,3,4", coding: str = "bitwise", compositions: bool = True,
            text: str = "heldout", calibration: str = "calibration", device: str = "cpu", dtype: str = "float32",
            load: Callable = load_model, progress: Progress = _quiet):
    """A head-to-head run (kind `compare`): every configuration against one dense reference; writes `compare.html`.
    Returns ``(run, table, seconds)``."""
    from sparsescope.harvest import compare as cmp
    from sparsescope.probes import load_text
    from sparsescope.show.compare import compare_page
    from sparsescope.spiking.convert import SpikeConfig

    cfg = cmp.CompareConfig(eval_tokens=eval_tokens, seq_len=seq_len, group_size=group_size,
                            teal=tuple(parse_floats(teal, "--teal")), spike_k=tuple(parse_floats(spike_k, "--spike-k")),
                            spike_coding=coding, compositions=compositions)
    for k in cfg.spike_k:
        SpikeConfig(k=k, coding=coding)
    store.check_writable()
    texts = load_text(text), load_text(calibration)
    start = time.perf_counter()
    lm = load(model, device=device, dtype=dtype)
    cmp.check(lm, cfg)
    table = cmp.compare(lm, texts[0], texts[1], cfg, lambda label: progress(1, cmp.n_steps(cfg), label))
    seconds = time.perf_counter() - start
    manifest = _manifest("compare", lm, seconds=seconds,
                         config={"model": model, "eval_tokens": eval_tokens, "seq_len": seq_len,
                                 "group_size": group_size, "teal": list(cfg.teal), "spike_k": list(cfg.spike_k),
                                 "coding": coding, "compositions": compositions, "text": text,
                                 "calibration": calibration, "device": device, "dtype": dtype})
    run = _finish(store, manifest, {"compare": table})
    run.write_file("compare.html", compare_page(run.manifest, table))
    return run, table, seconds

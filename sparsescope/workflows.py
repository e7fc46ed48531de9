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
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from sparsescope import __version__
from sparsescope.errors import UserError
from sparsescope.models import load_model
from sparsescope.models.sites import layer_list
from sparsescope.store import RunDir, RunStore, claimed_runs, claims

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
    window: int = 32  # matched tokens per prompt (after position 0 and a shared prefix); 0 = unmatched whole prompts
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
    """``"0,5,10-12"`` → ``[0, 5, 10, 11, 12]``; None or empty → None (every layer)."""
    return layer_list(value, "--layers") if value else None


def parse_floats(value: str, option: str) -> list[float]:
    """``"0.25,0.5"`` → ``[0.25, 0.5]``; one line naming the option otherwise."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {value!r}; write numbers separated by commas, e.g. 0.25,0.5") from None


# A scan manifest's `config`: the ScanOptions it was started with (suites as a list), checked before a resume.
_SCAN_CONFIG = {"model": str, "suites": list, "sites": (str, type(None)), "layers": (str, type(None)),
                "metrics": (str, type(None)), "ladders": (str, type(None)), "seed": int, "batch_size": int,
                "max_tokens": int, "window": int, "token_budget": (int, type(None)), "device": str, "dtype": str,
                "device_map": (str, type(None)), "backend": str, "remote": bool}
_SCAN_DEFAULTS = {"seed": 0, "ladders": None, "window": 0, "token_budget": None, "device": "cpu", "dtype": "float32",
                  "device_map": None, "backend": "hooks", "remote": False}  # what older runs, which lack them, used


def _resumed(store: RunStore, resume: str, given: ScanOptions) -> tuple[RunDir, ScanOptions]:
    """The interrupted scan to finish, locked for this process, and the options it was started with.

    Options in ``given`` that differ from both the defaults and the run's own are refused: a resume records the
    run's remaining suites as it was started, never silently something else."""
    run = store.latest(kind="scan", status="incomplete") if resume == "last" else store.open(resume)
    if run is None:
        raise UserError("no interrupted scan to resume; start a new one without --resume")
    if run.kind != "scan":
        raise UserError(f"run {run.run_id} is a {run.kind} run; only scans resume (run the {run.kind} again)")
    if run.status == "complete":
        raise UserError(f"run {run.run_id} is already complete; `sparsescope report {run.run_id}` shows it")
    cfg = _SCAN_DEFAULTS | (run.manifest.get("config") or {})
    bad = [k for k, t in _SCAN_CONFIG.items() if not isinstance(cfg.get(k), t)]
    if bad or not all(isinstance(s, str) for s in cfg["suites"]):
        raise UserError(f"run {run.run_id} has no readable manifest to resume from ('{(bad or ['suites'])[0]}' of "
                        "its config is missing or damaged); start a new scan")
    opts = ScanOptions(**{k: cfg[k] for k in _SCAN_CONFIG} | {"suites": ",".join(cfg["suites"])})
    asked = {k: getattr(given, k) for k in _SCAN_CONFIG if getattr(given, k) != getattr(ScanOptions(), k)}
    clash = [k for k, v in asked.items() if v != getattr(opts, k) and not (k == "suites" and split_list(v) == cfg[k])]
    if clash:
        flags = ", ".join(f"--{k.replace('_', '-')} (the run has {getattr(opts, k)!r})" for k in clash)
        raise UserError(f"--resume finishes run {run.run_id} with the options it was started with; drop {flags}, "
                        "or start a new scan without --resume")
    run.lock()
    if run.status == "complete":  # finished by another process between the check above and the lock
        run.unlock()
        raise UserError(f"run {run.run_id} is already complete; `sparsescope report {run.run_id}` shows it")
    return run, opts


def scan(store: RunStore, opts: ScanOptions, resume: str | None = None, load: Callable = load_model,
         announce: Callable[[str], None] = _quiet, progress: Progress = _quiet) -> RunDir:
    """Record a scan run (or finish the interrupted one ``resume`` names: its id or "last"), suite by suite.

    Each finished suite is written as a part at once; on any exception the run is marked incomplete and can be
    resumed. Everything the options name (and every prompt's tokens) is checked before the run is created.
    """
    since = claims()
    try:
        return _scan(store, opts, resume, load, announce, progress)
    except BaseException as e:  # Ctrl-C or a failure: the run keeps its finished suites and resumes from them
        for run in claimed_runs(since):
            if run.status != "complete":
                run.mark_incomplete(f"interrupted: {type(e).__name__}")
        raise


def _scan(store: RunStore, opts: ScanOptions, resume: str | None, load: Callable, announce: Callable[[str], None],
          progress: Progress) -> RunDir:
    from sparsescope.probes import CORRUPTIONS, DEFAULT_SUITES, ladder_spec, load_suites, unique_suites
    from sparsescope.record import RecordConfig, Recorder
    from sparsescope.record.accuracy import ANSWERS, answer_accuracy
    from sparsescope.record.recorder import part_key

    store.check_writable()
    run = None
    if resume:
        run, opts = _resumed(store, resume, opts)
    if opts.suites is not None and not split_list(opts.suites):
        raise UserError(f"--suites {opts.suites!r} names no suite; pass e.g. prose,code (or leave it out for all)")
    names = split_list(opts.suites) or list(DEFAULT_SUITES)
    corruptions = split_list(opts.ladders) or []
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown ladder {unknown[0]!r}; choose from {','.join(CORRUPTIONS)}")
    config = RecordConfig(sites=split_list(opts.sites), layers=parse_layers(opts.layers), metrics=opts.metrics,
                          batch_size=opts.batch_size, max_tokens=opts.max_tokens, window=opts.window,
                          token_budget=opts.token_budget, backend=opts.backend, remote=opts.remote)
    if opts.remote:
        from sparsescope.record.traced import remote_model

        if opts.device_map or opts.device != "cpu" or opts.dtype != "float32":
            raise UserError("--remote runs on NDIF's GPUs in NDIF's dtype; drop --device, --dtype and --device-map")
        lm = remote_model(opts.model)
    else:
        lm = load(opts.model, device=opts.device, dtype=opts.dtype, device_map=parse_device_map(opts.device_map))
    recorder = Recorder(lm, config)  # validates sites/layers/metrics before anything is written
    suite_objs = unique_suites(load_suites(names + [f"ladder:{c}" for c in corruptions], tokenizer=lm.tokenizer,
                                           seed=opts.seed))
    planned = {part_key(s): recorder.planned_tokens([s]) for s in suite_objs}  # checks every prompt and window
    if opts.remote and any(p.answer for s in suite_objs for p in s.prompts):
        raise UserError("difficulty suites score the model's greedy answers, which --remote does not run; drop the "
                        "difficulty: suites or scan without --remote")
    if run is None:  # created only now: a refused input leaves no run behind
        prose = load_suites(["prose"], tokenizer=lm.tokenizer, seed=opts.seed)[0] if corruptions else None
        ladders = {c: ladder_spec(prose, c, seed=opts.seed, tokenizer=lm.tokenizer) for c in corruptions}
        run = store.create(_manifest("scan", lm, suites=names, seed=opts.seed, ladders=ladders,
                                     config=asdict(opts) | {"suites": names},
                                     suite_sources={s.name: {"source": s.source, "license": s.license}
                                                    for s in suite_objs}), run_id=None)
    done = run.done_parts()
    todo = [s for s in suite_objs if part_key(s) not in done]
    total = sum(planned[part_key(s)] for s in todo)
    view = f"matched {config.window}-token windows" if config.window else "UNMATCHED whole prompts"
    where = f"{opts.backend}{', remote on NDIF' if opts.remote else ''}, {lm.placement.get('device', 'cpu')}"
    announce(f"run [bold]{run.run_id}[/]: {len(recorder.targets)} sites × {len(recorder.metrics)} metrics, "
             f"{len(todo)} suites to record ({len(done)} already done), {total} tokens, {view} ({where})")
    start = time.perf_counter()
    recorder.run(todo, run_id=run.run_id, progress=lambda n: progress(n, total),
                 on_suite=lambda key, part: run.write_part(
                     key, {"activations": part.activations, "prompts": part.prompts, "neurons": part.neurons}))
    tasks = [s for s in suite_objs if any(p.answer for p in s.prompts)]
    if tasks and ANSWERS not in done:  # difficulty ladders: the model's own accuracy per level
        announce(f"answering {sum(len(s.prompts) for s in tasks)} difficulty prompts (greedy, for the accuracy)")
        run.write_part(ANSWERS, {ANSWERS: answer_accuracy(lm, tasks)})
    seconds = time.perf_counter() - start  # this session's recording (a resumed run times only what it recorded)
    padded = recorder.padded_tokens  # forward-pass tokens including right padding
    run.manifest["throughput"] = {"tokens": total, "seconds": round(seconds, 3),
                                  "tokens_per_s": round(total / max(seconds, 1e-9), 1),
                                  "padded_tokens": padded, "padding_frac": round(1 - total / max(padded, 1), 4)}
    run.finalize()
    return run


@dataclass
class Report:
    """What `report` found in a scan run: the metric summarised, the ID/OOD summary (None when the run has no
    ID or OOD suite, e.g. only ladders), the statistic tables, the HTML page (or None)."""

    run: RunDir
    metric: str
    summary: pd.DataFrame | None
    stats: dict[str, pd.DataFrame]
    html: Path | None


def open_run(store: RunStore, run_id: str = "last", kind: str = "scan") -> RunDir:
    """A complete run of ``kind`` by id (prefix), or the latest complete one of that kind for "last"."""
    if run_id == "last":
        run = store.latest(kind=kind, status="complete")
        if run is None:
            raise UserError(f"no complete {kind} run in {store.root} yet; record one with `sparsescope {kind}`")
        return run
    run = store.open(run_id)
    if run.kind != kind:
        raise UserError(f"run {run.run_id} is a {run.kind} run, not a {kind} run; pick a {kind} run "
                        f"(`sparsescope runs` lists them with their kind)")
    return run


def default_metric(activations: pd.DataFrame) -> str:
    """The metric a summary shows when none is asked for: hoyer if recorded, else the run's first recorded one."""
    from sparsescope.record.metrics import BASE_METRICS, Metric

    recorded = activations[activations["metric"].isin(BASE_METRICS)].drop_duplicates(["metric", "threshold"])
    if (recorded["metric"] == "hoyer").any() or recorded.empty:
        return "hoyer"
    first = recorded.iloc[0]
    return Metric(first["metric"], float(first["threshold"])).label


def report(run: RunDir, metric: str | None = None, html: bool = True) -> Report:
    """Summarise a scan run: ID vs OOD per layer and, with a `prompts` table, the statistics over prompts (their
    `effects`, `trends`, `ladder_means` (the ladder bands), `detector` and its ROC points `roc` are written into the
    run); ``html`` also writes `report.html`.

    ``metric`` None: hoyer, or the run's first metric when it has no hoyer. A run without ID or OOD suites
    (ladders only) has no ID/OOD summary (``summary`` None) but still its statistics and page."""
    from sparsescope.harvest.summary import DEFAULT_SITES, ID, OOD, statistics, summary_table
    from sparsescope.ood import roc_table
    from sparsescope.show.report import write_html

    acts = run.read("activations")
    metric = metric or default_metric(acts)
    summary = None
    if acts["split"].isin([ID, OOD]).any():
        present = set(acts["site"])
        summary = summary_table(acts, metric=metric, sites=[s for s in DEFAULT_SITES if s in present] or None)
    stats = {}
    if "prompts" in run.manifest.get("tables", {}):
        stats = statistics(run.read("prompts"))
        if "detector" in stats:  # the ROC points go into their own tidy table
            stats["roc"] = roc_table(stats["detector"])
        for name in ("effects", "trends", "ladder_means", "detector", "roc"):
            if name in stats:
                run.write_table(name, stats[name].drop(columns=["fpr", "tpr"]) if name == "detector" else stats[name])
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


# -- plan (harvest planner) ------------------------------------------------------------------------------------
def plan(store: RunStore, model: str, budget: str = "5%", sparsities: str = "0.3,0.5,0.7", int8: bool = True,
         eval_tokens: int = 1024, rounds: int = 4, teal: bool = True, apply: bool = False, tokens: int = 32,
         repeats: int = 3, output: Path | None = None, text: str = "heldout", calibration: str = "calibration",
         cpu_time: bool = False, load: Callable = load_model, progress: Progress = _quiet, pricing: str = "loop"):
    """A harvest plan run (kind `plan`): tables plan, comparison, rounds (+ decode with ``apply``) and plan.yaml.

    Returns ``(run, result, tables)`` (``harvest.planner.PlanResult``, the tables written).
    """
    from sparsescope.harvest import planner as pl
    from sparsescope.probes import load_text

    cfg = pl.PlannerConfig(budget=pl.parse_budget(budget), sparsities=tuple(parse_floats(sparsities, "--sparsities")),
                           int8=int8, eval_tokens=eval_tokens, rounds=rounds, compare_teal=teal, pricing=pricing,
                           clock="cpu" if cpu_time else "wall")
    store.check_writable()
    from sparsescope.bench import check_threads

    check_threads([], cpu_time)
    texts = load_text(text), load_text(calibration)
    start = time.perf_counter()
    lm = load(model)
    total = pl.n_steps(lm, cfg) + (3 * repeats + 6 if apply else 0)
    tick = lambda label: progress(1, total, label)  # noqa: E731
    result = pl.plan(lm, texts[0], texts[1], cfg, tick)
    tables = {"plan": result.table, "comparison": result.comparison, "rounds": result.rounds}
    if apply:
        tables["decode"] = pl.decode_check(lm, result.plan, texts[0], texts[1], tokens, repeats, cfg, tick, cpu_time)
    config = {"model": model, "budget": cfg.budget, "sparsities": list(cfg.sparsities), "int8": int8,
              "eval_tokens": eval_tokens, "rounds": rounds, "teal": teal, "apply": apply, "text": text,
              "calibration": calibration, "cpu_time": cpu_time, "pricing": pricing}
    run = _finish(store, _manifest("plan", lm, seconds=time.perf_counter() - start, notes=result.plan.notes,
                                   config=config), tables)
    result.plan.to_yaml(run.path / "plan.yaml")
    if output is not None:
        result.plan.to_yaml(output)
    return run, result, tables


# -- circuits --------------------------------------------------------------------------------------------------
CIRCUIT_TASKS = "ioi,greater_than,induction,agreement,capitals"


def circuits_config(methods: str = "eap,eap_ig,mask", level: str = "heads", ablation: str = "counterfactual",
                    n: int = 24, seed: int = 0, steps: int = 5, random_seeds: int = 5, validate: int = 0,
                    mask_steps: int = 60, sae: str | None = None, store: RunStore | None = None,
                    refine: float = 0.1):
    """A :class:`~sparsescope.circuits.study.DiscoverConfig` from command-line values, checked. ``sae`` (an sae run
    id of ``store``, its folder or a checkpoint folder) makes the SAE's features the nodes (level ``features``)."""
    from sparsescope.circuits.mask import MaskConfig
    from sparsescope.circuits.study import DiscoverConfig, check_methods

    if sae is not None:
        sae = str(sae_folder(store or RunStore(), sae))
        level = "features" if level == "heads" else level  # heads is the default: --sae alone means features
    cfg = DiscoverConfig(methods=tuple(split_list(methods) or ()), level=level, ablation=ablation, n=n, seed=seed,
                         steps=steps, random_seeds=random_seeds, validate=validate, mask=MaskConfig(steps=mask_steps),
                         sae=sae, refine=refine)
    check_methods(cfg.methods)
    return cfg


def sae_folder(store: RunStore, text: str) -> Path | str:
    """The checkpoint folder of ``--sae``: a folder holding ``cfg.json``, an sae run's folder, or an sae run id
    (``basis:<site>``, the site's own units, passes through)."""
    from sparsescope.circuits.features import BASIS

    if text.startswith(BASIS):
        return text
    folder = Path(text)
    for candidate in (folder, folder / "sae"):
        if (candidate / "cfg.json").is_file():
            return candidate
    run = store.open(text)
    if run.kind != "sae":
        raise UserError(f"run {run.run_id} is a {run.kind} run, not an sae run; pass an sae run id or an SAE "
                        "checkpoint folder")
    return run.path / "sae"


def _task_names(tasks: str) -> list[str]:
    from sparsescope.circuits.tasks import check_task

    names = split_list(tasks) or []
    if not names:
        raise UserError("no tasks given; pass e.g. --tasks ioi,induction")
    for name in names:
        check_task(name)
    return names


def _circuits_run(store: RunStore, lm, config: dict, tables: dict[str, pd.DataFrame], start: float) -> RunDir:
    from sparsescope.show.circuits import circuits_page

    run = _finish(store, _manifest("circuits", lm, seconds=time.perf_counter() - start, config=config), tables)
    run.write_file("circuits.html", circuits_page(run.manifest, tables))
    return run


def circuits_tasks(store: RunStore, model: str, tasks: str = CIRCUIT_TASKS, n: int = 24, seed: int = 0,
                   load: Callable = load_model, progress: Progress = _quiet):
    """A circuits run with the ``tasks`` table: accuracy and mean logit difference per task against chance.
    Returns ``(run, table, seconds)``."""
    from sparsescope.circuits.study import tasks_table

    names = _task_names(tasks)
    store.check_writable()
    start = time.perf_counter()
    lm = load(model)
    table = tasks_table(lm, names, n, seed, lambda k: progress(k, len(names)))
    run = _circuits_run(store, lm, {"command": "tasks", "model": model, "tasks": names, "n": n, "seed": seed},
                        {"tasks": table}, start)
    return run, table, time.perf_counter() - start


def circuits_discover(store: RunStore, model: str, tasks: str, cfg, save: Path | None = None,
                      load: Callable = load_model, progress: Progress = _quiet):
    """A circuits run: every method's ranking, circuit and held-out scores per task (``save``: one circuit JSON per
    task and method). Returns ``(run, tables, seconds)``."""
    from sparsescope.circuits.study import make_patcher, run_discovery, save_circuit, work

    names = _task_names(tasks)
    store.check_writable()
    start = time.perf_counter()
    lm = load(model)
    patcher = make_patcher(lm, cfg.level, "zero", sae=cfg.sae)  # checks the SAE before any work
    total = work(cfg, patcher.n_nodes) * len(names)
    tables = run_discovery(lm, names, cfg, lambda k: progress(k, total))
    if save:
        save.mkdir(parents=True, exist_ok=True)
        chosen = tables["edges"][tables["edges"]["in_circuit"]] if cfg.level == "edges" else tables["circuit"]
        for (task, method), c in chosen.groupby(["task", "method"]):
            save_circuit(save / f"{task}.{method}.json", lm, c, cfg.level, patcher if cfg.sae else None)
    run = _circuits_run(store, lm, {"command": "discover", "model": model, "tasks": names, "discover": asdict(cfg)},
                        tables, start)
    return run, tables, time.perf_counter() - start


def circuits_compare(store: RunStore, model: str, tasks: str, cfg, prune: str = "magnitude",
                     sparsity: str | float | None = None, neurons: bool = True, clusters: int = 8,
                     load: Callable = load_model, progress: Progress = _quiet):
    """A circuits run comparing tasks' circuits (overlap), circuit neurons' firing and co-activation clusters, and
    dense vs pruned circuits for every method of ``prune`` (``sparsity``: one value per method, default each method's
    knee from the newest weights run; a number: that sparsity for every method). Returns ``(run, tables, seconds)``."""
    from sparsescope.circuits.study import compare_pruned, knee_sparsity, make_patcher, work

    names = _task_names(tasks)
    if len(names) < 2:
        raise UserError("compare needs at least two tasks to measure overlap; pass e.g. --tasks ioi,induction")
    methods = split_list(prune) or []
    if isinstance(sparsity, (int, float)):  # one number: the same sparsity for every method
        values = [float(sparsity)] * len(methods)
    else:
        values = parse_floats(sparsity, "--sparsity") if sparsity else [knee_sparsity(store, m) for m in methods]
    if len(values) != len(methods):
        raise UserError(f"--sparsity gives {len(values)} values for {len(methods)} prune methods ({prune}); give one "
                        "per method, e.g. --prune magnitude,wanda --sparsity 0.147,0.156")
    store.check_writable()
    start = time.perf_counter()
    lm = load(model)
    total = len(names) * ((1 + len(methods)) * work(cfg, make_patcher(lm, "heads", "zero").n_nodes)
                          + (work(cfg, make_patcher(lm, "neurons", "zero").n_nodes) if neurons else 0))
    prunes = dict(zip(methods, values))
    tables = compare_pruned(lm, names, cfg, prunes, lambda k: progress(k, total), neurons, clusters)
    config = {"command": "compare", "model": model, "tasks": names, "prune": prunes, "neurons": neurons,
              "clusters": clusters, "discover": asdict(cfg)}
    run = _circuits_run(store, lm, config, tables, start)
    return run, tables, time.perf_counter() - start


def circuits_ablate(model: str, task: str, components: str, ablation: str = "counterfactual", n: int = 24,
                    seed: int = 0, load: Callable = load_model, sae: str | None = None,
                    store: RunStore | None = None) -> pd.DataFrame:
    """Metric and accuracy on the task's held-out prompts before and after ablating ``components`` (one row;
    SAE features ``L6F12`` with ``sae``)."""
    from sparsescope.circuits.patch import parse_components
    from sparsescope.circuits.study import ablate

    _task_names(task)
    nodes = parse_components(components)
    cfg = circuits_config(ablation=ablation, n=n, seed=seed, sae=sae, store=store)
    return pd.DataFrame([ablate(load(model), task, nodes, cfg)])


def circuits_score(model: str, task: str, circuit: Path, ablation: str = "counterfactual", n: int = 24,
                   seed: int = 0, load: Callable = load_model, sae: str | None = None,
                   store: RunStore | None = None) -> pd.DataFrame:
    """Faithfulness, necessity and sufficiency of a saved circuit on the task's held-out prompts (one row; a feature
    circuit with ``sae`` or the SAE its file names)."""
    from sparsescope.circuits.study import load_circuit, score_circuit

    _task_names(task)
    cfg = circuits_config(ablation=ablation, n=n, seed=seed, sae=sae, store=store)
    lm = load(model)
    nodes, level = load_circuit(circuit, lm)
    return pd.DataFrame([score_circuit(lm, task, nodes, level, cfg)])

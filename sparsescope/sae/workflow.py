"""SAE runs in the store: `train_run` (cache → train → evaluate → inspect) and `eval_run`, each checking every
input before anything is written, marking a run incomplete if it stops half-way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from sparsescope.errors import UserError
from sparsescope.sae.activations import ActivationCache, check_sites, record_cache, shuffled_batches, text_windows
from sparsescope.sae.study import EvalConfig, evaluate, inspect
from sparsescope.sae.train import SAETrainConfig, load_sae, train

Progress = Callable[[str, int, "int | None"], None]  # (stage, tokens just done, stage total or None)


@dataclass
class CacheOptions:
    """Where training activations come from."""

    text: str = "train"  # training text: bundled name or a UTF-8 file
    tokens: int = 100_000  # tokens to record (position 0 of each window excluded)
    context: int = 128  # tokens per window
    extra_sites: list[str] = field(default_factory=list)  # more sites recorded in the same pass
    cache_from: str | None = None  # reuse the cache of an earlier sae run (id) or a cache folder


def _no_progress(stage: str, n: int, total: int | None) -> None:
    pass


def _source_cache(store, cache_from: str):
    """(cache, source run or None) for --cache-from: a cache folder or an sae run id."""
    folder = Path(cache_from)
    source = None
    if not (folder / "meta.json").is_file():
        source = store.open(cache_from)
        folder = source.path / "activations"
    return ActivationCache.open(folder), source


def train_run(store, model: str, load: Callable, cfg: SAETrainConfig, cache_opts: CacheOptions,
              eval_cfg: EvalConfig | None, progress: Progress = _no_progress):
    """Record (or reuse) activations, train, evaluate and inspect one SAE; returns the complete run."""
    cfg.check()
    store.check_writable()
    cache = source = None
    if cache_opts.cache_from:
        cache, source = _source_cache(store, cache_opts.cache_from)
        cache.array(cfg.site)  # refuses a cache without this site
        if source is not None:
            model = source.manifest.get("config", {}).get("model", model)
    lm = load(model)
    sites = [cfg.site, *cache_opts.extra_sites]
    check_sites(lm, sites)
    if cache is not None:
        if cache.meta["model_revision"] != lm.revision:
            raise UserError(f"{cache_opts.cache_from} cached activations of another model revision "
                            f"({cache.meta['model_revision']}, not {lm.revision}); record a new cache")
        data = cache.meta
    else:
        from sparsescope.probes import load_text

        body = load_text(cache_opts.text)
        windows = text_windows(lm, body, cache_opts.context, max(1, -(-cache_opts.tokens // (cache_opts.context - 1))))
        n_tokens = int(windows.numel() - len(windows))
        if n_tokens < cfg.batch_size:
            raise UserError(f"the training text gives {n_tokens} tokens, fewer than one batch of {cfg.batch_size}; "
                            "give a longer --text or lower --batch-size")
        data = dict(text=cache_opts.text, context=cache_opts.context, n_tokens=n_tokens)
    manifest = {"kind": "sae", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "site": cfg.site, "seed": cfg.seed, "data": data,
                "cache_from": None if cache is None else source.run_id if source is not None else str(cache.path),
                "config": {"model": model, **asdict(cfg), "cache": asdict(cache_opts),
                           "eval": asdict(eval_cfg) if eval_cfg else None}}
    run = store.create(manifest)
    try:
        if cache is None:
            cache = record_cache(lm, sites, body, run.path / "activations", cache_opts.context, cache_opts.tokens,
                                 text_name=cache_opts.text,
                                 progress=lambda n: progress("record", n, int(windows.numel())))
        done = [0]

        def trained_to(n: int) -> None:
            progress("train", n - done[0], cfg.train_tokens // cfg.batch_size * cfg.batch_size)
            done[0] = n

        result = train(shuffled_batches(cache.array(cfg.site), cfg.batch_size, seed=cfg.seed),
                       cache.meta["dims"][cfg.site], cfg, run.path / "sae",
                       dict(model=lm.name, model_revision=lm.revision, data=cache.meta, seed=cfg.seed),
                       progress=trained_to)
        tables = {"sae_training": result.curve.assign(site=cfg.site)}
        if eval_cfg is not None:
            tables |= evaluation_tables(lm, result.sae, cfg.site, cache, eval_cfg, progress)
        run.finalize({name: df.assign(run_id=run.run_id) for name, df in tables.items()})
    except BaseException as e:
        run.mark_incomplete(f"interrupted: {type(e).__name__}")
        raise
    return run


def evaluation_tables(lm, sae, site: str, cache: ActivationCache | None, cfg: EvalConfig,
                      progress: Progress = _no_progress) -> dict[str, pd.DataFrame]:
    """Every evaluation table of one SAE: metrics, features (with training-corpus densities), probe, contexts,
    logits (the last two and the training densities need the activation cache)."""
    from sparsescope.probes import load_suites, load_text

    suites = load_suites(cfg.suites, tokenizer=lm.tokenizer, seed=cfg.seed)
    tables = evaluate(lm, sae, site, suites, cfg, load_text(cfg.heldout),
                      progress=lambda n: progress("evaluate", n, None))
    if cache is not None:
        found = inspect(lm, sae, site, cache, max_tokens=cfg.inspect_tokens,
                        progress=lambda n: progress("inspect", n, None))
        tables["sae_features"] = pd.concat([tables["sae_features"], found.pop("train_density")], ignore_index=True)
        tables |= found
    return tables


def open_sae_run(store, run_id: str):
    """``(run, sae, sae manifest)`` of an sae run (id prefix or 'last')."""
    run = store.latest(kind="sae") if run_id == "last" else store.open(run_id)
    if run is None:
        raise UserError("no sae runs yet; train one with `sparsescope sae train`")
    if run.kind != "sae":
        raise UserError(f"run {run.run_id} is a {run.kind} run, not an sae run; pick one from `sparsescope runs`")
    sae, manifest = load_sae(run.path / "sae")
    return run, sae, manifest


def run_cache(store, run) -> ActivationCache | None:
    """The activation cache a run trained on (its own, or the one it reused), if it still exists."""
    folder = run.path / "activations"
    source = run.manifest.get("cache_from")
    if not folder.is_dir() and source:
        folder = Path(source) if Path(source).is_dir() else store.open(source).path / "activations"
    return ActivationCache.open(folder) if folder.is_dir() else None


def eval_run(store, run_id: str, load: Callable, cfg: EvalConfig, progress: Progress = _no_progress):
    """Re-evaluate an sae run's checkpoint and write its evaluation tables into the run (each atomically). A run
    stopped after its checkpoint was saved (during its own evaluation) is completed by this evaluation."""
    from sparsescope.sae.evaluate import check_width

    run, sae, manifest = open_sae_run(store, run_id)
    lm = load(run.manifest["config"]["model"])
    check_width(sae, lm, manifest["site"])
    if manifest.get("model_revision") and manifest["model_revision"] != lm.revision:
        raise UserError(f"the SAE was trained on model revision {manifest['model_revision']}, this model is "
                        f"{lm.revision}; evaluate it on the model it was trained on")
    tables = evaluation_tables(lm, sae, manifest["site"], run_cache(store, run), cfg, progress)
    tables = {name: df.assign(run_id=run.run_id) for name, df in tables.items()}
    if run.status == "complete":
        for name, df in tables.items():
            run.write_table(name, df)
    else:
        run.finalize(tables)
    return run

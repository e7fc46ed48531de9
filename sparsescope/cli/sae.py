"""`sparsescope sae train | eval | features`: sparse autoencoders on any site, stored as runs of kind `sae`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import (
    app, console, out, RUNS_DIR, MODEL, friendly, split_list, token_progress, load, _show,
)
from sparsescope.errors import UserError

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train with sae-lens on cached activations, "
                                                 "evaluate in the model's forward pass, inspect features.")
app.add_typer(sae_app, name="sae")

SUITES = typer.Option(None, help="ID/OOD prompt suites, comma-separated (default: the bundled ones).")
N_BOOT = typer.Option(1000, help="Bootstrap resamples for the confidence intervals.")
MAX_PROMPTS = typer.Option(None, help="Evaluate on at most this many prompts per suite (default: all).")
HELDOUT = typer.Option(4096, help="Held-out tokens for the headline metrics.")


def _bar(label: str):
    """A token progress bar and an ``advance(n)`` (or ``set(done)`` with absolute=True) that shows tokens/s."""
    bar = token_progress(0, label)
    start = time.perf_counter()

    def make(total: int, absolute: bool = False):
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            bar.update(task, completed=n) if absolute else bar.advance(task, n)
            done = bar.tasks[task].completed
            bar.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.0f} tok/s")
        return advance

    return bar, make


@sae_app.command("train")
@friendly
def train_cmd(
    model: str = MODEL,
    site: str = typer.Option("blocks.6.mlp.hook_post", help="Site whose activations the SAE reconstructs."),
    arch: str = typer.Option("topk", "--arch", help="topk, batchtopk, jumprelu or standard."),
    k: int = typer.Option(64, help="TopK: features per token; BatchTopK: on average; JumpReLU: target L0."),
    d_sae: int = typer.Option(4096, help="Number of SAE features."),
    sparsity_coefficient: Optional[float] = typer.Option(None, help="JumpReLU L0 / Standard L1 coefficient."),
    train_tokens: int = typer.Option(600_000, help="Samples the trainer sees (cached tokens reused in passes)."),
    batch_size: int = typer.Option(512, help="Samples per optimiser step."),
    lr: float = typer.Option(5e-4, help="Adam learning rate."),
    cache_tokens: int = typer.Option(100_000, help="Tokens of training text to record (position 0 excluded)."),
    cache_sites: Optional[str] = typer.Option(None, help="More sites to record in the same pass, for later runs "
                                                         "with --cache-from."),
    cache_from: Optional[str] = typer.Option(None, help="Reuse the activation cache of an earlier sae run (id) or "
                                                        "a cache folder."),
    text: str = typer.Option("train", help="Training text: 'train' (bundled) or a UTF-8 file."),
    context: int = typer.Option(128, help="Tokens per training window."),
    seed: int = typer.Option(0, help="Seed of the SAE initialisation and shuffling."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop training after this many minutes (wall time)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate and inspect features when trained."),
    suites: Optional[str] = SUITES,
    n_boot: int = N_BOOT,
    max_prompts: Optional[int] = MAX_PROMPTS,
    heldout_tokens: int = HELDOUT,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record a site's activations once, train an SAE on them with sae-lens, then evaluate it (default)."""
    from sparsescope.sae.activations import ActivationCache, check_sites, record_cache, shuffled_batches, text_windows
    from sparsescope.sae.train import SAETrainConfig, train
    from sparsescope.store import RunStore

    cfg = SAETrainConfig(site=site, architecture=arch, d_sae=d_sae, k=k, sparsity_coefficient=sparsity_coefficient,
                         train_tokens=train_tokens, batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes)
    cfg.check()
    store = RunStore(runs_dir)
    store.check_writable()
    source = None
    if cache_from:  # an earlier sae run, or a cache folder
        folder = Path(cache_from)
        if not (folder / "meta.json").is_file():
            source = store.open(cache_from)
            folder = source.path / "activations"
            model = source.manifest.get("config", {}).get("model", model)
        cache = ActivationCache.open(folder)
        cache.array(site)  # refuses a cache without this site
    lm = load(model)
    sites = [site, *(split_list(cache_sites) or [])]
    check_sites(lm, sites)
    if cache_from:
        if cache.meta["model_revision"] != lm.revision:
            raise UserError(f"{cache_from} cached activations of another model revision ({cache.meta['model_revision']}"
                            f", not {lm.revision}); record a new cache")
        data_meta = cache.meta
    else:
        from sparsescope.probes import load_text

        body = load_text(text)
        windows = text_windows(lm, body, context, max(1, -(-cache_tokens // (context - 1))))
        if windows.numel() - len(windows) < batch_size:
            raise UserError(f"the training text gives {windows.numel() - len(windows)} tokens, fewer than one batch "
                            f"of {batch_size}; give a longer --text or lower --batch-size")
        data_meta = dict(text=text, context=context, n_tokens=int(windows.numel() - len(windows)))
    manifest = {"kind": "sae", "model": lm.name, "model_revision": lm.revision, "weights_note": lm.weights_note,
                "site": site, "seed": seed, "data": data_meta,
                "cache_from": (source.run_id if source is not None else str(cache.path)) if cache_from else None,
                "config": {"model": model, "site": site, "arch": arch, "k": k, "d_sae": d_sae,
                           "sparsity_coefficient": sparsity_coefficient, "train_tokens": train_tokens,
                           "batch_size": batch_size, "lr": lr, "cache_tokens": cache_tokens, "cache_sites": sites,
                           "text": text, "context": context, "seed": seed, "max_minutes": max_minutes,
                           "max_prompts": max_prompts, "heldout_tokens": heldout_tokens}}
    run = store.create(manifest)
    try:
        if not cache_from:
            bar, make = _bar("record")
            with bar:
                cache = record_cache(lm, sites, body, run.path / "activations", context, cache_tokens,
                                     text_name=text, progress=make(int(windows.numel())))
            out.print(f"cached {cache.n_tokens} tokens × {len(sites)} site(s) in float16 → {cache.path}")
        bar, make = _bar("train")
        data = shuffled_batches(cache.array(site), batch_size, seed=seed)
        with bar:
            result = train(data, cache.meta["dims"][site], cfg, run.path / "sae",
                           dict(model=lm.name, model_revision=lm.revision, data=cache.meta, seed=seed),
                           progress=make(train_tokens // batch_size * batch_size, absolute=True))
        out.print(f"trained {result.tokens} samples in {result.seconds:.0f} s ({result.tokens_per_s:.0f} tok/s) "
                  f"→ {result.path}")
        tables = {"sae_training": result.curve.assign(run_id=run.run_id, site=site)}
        if evaluate:
            tables |= _evaluate(lm, result.sae, site, cache, suites, n_boot, run.run_id, max_prompts, heldout_tokens)
    except BaseException as e:
        run.mark_incomplete(f"interrupted: {type(e).__name__}")
        raise
    run.finalize(tables)
    _print_metrics(run)


def _evaluate(lm, sae, site: str, cache, suites: Optional[str], n_boot: int, run_id: str, max_prompts=None,
              heldout_tokens: int = 4096) -> dict:
    """Every evaluation table of one SAE (metrics, features, probe, contexts, logits)."""
    import pandas as pd

    from sparsescope.probes import load_suites, load_text
    from sparsescope.sae.study import EvalConfig, evaluate, inspect

    cfg = EvalConfig(suites=split_list(suites), n_boot=n_boot, max_prompts=max_prompts, heldout_tokens=heldout_tokens)
    suite_objs = load_suites(cfg.suites, tokenizer=lm.tokenizer, seed=cfg.seed)
    bar, make = _bar("evaluate")
    with bar:
        tables = evaluate(lm, sae, site, suite_objs, cfg, load_text(cfg.heldout), progress=make(0))
        if cache is not None:
            found = inspect(lm, sae, site, cache, progress=make(0))
            tables["sae_features"] = pd.concat([tables["sae_features"], found.pop("train_density")],
                                               ignore_index=True)
            tables |= found
    return {name: df.assign(run_id=run_id) for name, df in tables.items()}


@sae_app.command("eval")
@friendly
def eval_cmd(
    run_id: str = typer.Argument("last", help="An sae run id (prefix) or 'last'."),
    suites: Optional[str] = SUITES,
    n_boot: int = N_BOOT,
    max_prompts: Optional[int] = MAX_PROMPTS,
    heldout_tokens: int = HELDOUT,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Re-evaluate a trained SAE: held-out metrics, ID vs OOD per family with CIs, features vs neurons."""
    from sparsescope.sae.evaluate import check_width

    run, sae, manifest = _open(run_id, runs_dir)
    lm = load(run.manifest["config"]["model"])
    check_width(sae, lm, manifest["site"])
    if manifest.get("model_revision") and manifest["model_revision"] != lm.revision:
        console.print(f"[yellow]warning:[/] the SAE was trained on model revision {manifest['model_revision']}, "
                      f"this model is {lm.revision}")
    cache = _cache(run, runs_dir)
    for name, df in _evaluate(lm, sae, manifest["site"], cache, suites, n_boot, run.run_id, max_prompts,
                              heldout_tokens).items():
        run.write_table(name, df)
    _print_metrics(run)


def _open(run_id: str, runs_dir):
    from sparsescope.sae.train import load_sae
    from sparsescope.store import RunStore

    store = RunStore(runs_dir)
    run = store.latest(kind="sae") if run_id == "last" else store.open(run_id)
    if run is None:
        raise UserError("no sae runs yet; train one with `sparsescope sae train`")
    if run.kind != "sae":
        raise UserError(f"run {run.run_id} is a {run.kind} run, not an sae run; pick one from `sparsescope runs`")
    sae, manifest = load_sae(run.path / "sae")
    return run, sae, manifest


def _cache(run, runs_dir):
    from sparsescope.sae.activations import ActivationCache
    from sparsescope.store import RunStore

    folder = run.path / "activations"
    source = run.manifest.get("cache_from")
    if not folder.is_dir() and source:
        folder = Path(source) if Path(source).is_dir() else RunStore(runs_dir).open(source).path / "activations"
    return ActivationCache.open(folder) if folder.is_dir() else None


@sae_app.command("features")
@friendly
def features_cmd(
    run_id: str = typer.Argument("last", help="An sae run id (prefix) or 'last'."),
    feature: Optional[str] = typer.Option(None, help="Feature indices to show, e.g. 12,345 (default: the features "
                                                     "whose firing frequency changes most from ID to OOD)."),
    top: int = typer.Option(5, help="How many features to show when --feature is not given."),
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Show features: top contexts (activating token marked «»), density, ID/OOD frequency, logit effects."""
    from rich.table import Table

    from sparsescope.sae.study import feature_cards

    run, sae, manifest = _open(run_id, runs_dir)
    for name in ("sae_features", "sae_contexts"):
        if name not in run.manifest["tables"]:
            raise UserError(f"run {run.run_id} has no {name} table; run `sparsescope sae eval {run.run_id}` first")
    logits = run.read("sae_logits") if "sae_logits" in run.manifest["tables"] else None
    wanted = [int(f) for f in split_list(feature)] if feature else None
    for card in feature_cards(run.read("sae_features"), run.read("sae_contexts"), logits, wanted, top,
                              sae.cfg.d_sae):
        table = Table("rank", "activation", "context", title=card["title"], caption=card["caption"])
        for r in card["contexts"].itertuples():
            table.add_row(str(r.rank), f"{r.activation:.3g}", r.text)
        _show(table)


def _print_metrics(run) -> None:
    from rich.table import Table

    m = run.read("sae_metrics") if "sae_metrics" in run.manifest["tables"] else None
    if m is None:
        out.print(f"no evaluation stored; run `sparsescope sae eval {run.run_id}`")
        return

    def ci(r, name, fmt="{:.3f}"):
        v = getattr(r, name)
        return "" if v != v else f"{fmt.format(v)} [{fmt.format(getattr(r, name + '_lo'))}, " \
                                 f"{fmt.format(getattr(r, name + '_hi'))}]"

    first = m.iloc[0]
    table = Table("split", "family", "tokens", "L0", "explained var.", "CE recovered", "KL score", "cosine", "dead",
                  "dense", title=f"{run.run_id}: {first.architecture} SAE at {first.site} "
                                 f"({first.d_in} → {first.d_sae}), 95 % CIs over prompts")
    for r in m.itertuples():
        table.add_row(r.split, r.family, str(r.n_tokens), ci(r, "l0", "{:.1f}"), ci(r, "explained_variance"),
                      ci(r, "ce_loss_recovered"), ci(r, "kl_score"), ci(r, "cosine"), f"{r.dead_frac:.1%}",
                      f"{r.dense_frac:.1%}")
    _show(table)
    if "sae_probe" in run.manifest["tables"]:
        p = run.read("sae_probe")
        sparse = p[(p.method == "k-sparse probe") & (p.target == "ood")].pivot_table(index="k", columns="units",
                                                                                       values="auroc")
        det = p[p.method == "ood detector"].groupby("units")["auroc"].mean()
        probe = Table("k", *sparse.columns, title="ID vs OOD AUROC: k-sparse probe (out-of-fold), SAE features vs "
                                                  "neurons; last row: OOD detector on all units (mean over held-out "
                                                  "families)")
        for kk, r in sparse.iterrows():
            probe.add_row(str(kk), *[f"{v:.3f}" for v in r])
        probe.add_row("all", *[f"{det.get(u, float('nan')):.3f}" for u in sparse.columns])
        _show(probe)
    out.print(f"tables {', '.join(run.manifest['tables'])} → {run.path}")
    out.print(f"page: {_page(run, m)}")


def _page(run, metrics) -> Path:
    """``sae.html`` in the run folder: the metrics, the feature-density histograms and the probe table."""
    from sparsescope.harvest.page import html_page
    from sparsescope.sae.study import density_figure

    tables = run.manifest["tables"]
    parts: list = ["Metrics (95 % CIs over prompts; held-out: over windows)", metrics.drop(columns=["run_id"])]
    if "sae_features" in tables:
        parts += ["Feature density", density_figure(run.read("sae_features"))]
    if "sae_probe" in tables:
        parts += ["Features vs neurons: k-sparse probe and OOD detector", run.read("sae_probe").drop(columns=["run_id"])]
    m = run.manifest
    facts = {"model": f"{m['model']} ({m.get('model_revision')})", "site": m.get("site"),
             "data": f"{m['data'].get('text')}: {m['data'].get('n_tokens')} tokens, context {m['data'].get('context')}",
             "config": m.get("config"), "note": m.get("weights_note")}
    return run.write_file("sae.html", html_page(f"SAE {run.run_id}", facts, parts))

"""`sparsescope sae train | eval | features`: sparse autoencoders on any site, stored as runs of kind `sae`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sparsescope.cli._common import Bar, app, out, RUNS_DIR, MODEL, friendly, load, show
from sparsescope.errors import UserError
from sparsescope.workflows import split_list

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train with sae-lens on cached activations, "
                                                 "evaluate in the model's forward pass, inspect features.")
app.add_typer(sae_app, name="sae")

SUITES = typer.Option(None, help="ID/OOD prompt suites, comma-separated (default: the bundled ones).")
N_BOOT = typer.Option(1000, help="Bootstrap resamples for the confidence intervals.")
MAX_PROMPTS = typer.Option(None, help="Evaluate on at most this many prompts per suite (default: all).")
HELDOUT = typer.Option(4096, help="Held-out tokens for the headline metrics.")
INSPECT = typer.Option(50_000, help="Cached tokens searched for each feature's top contexts.")


def _bars():
    """One token progress bar per stage (record, train, evaluate, inspect), each closed when the next starts."""
    bars: dict[str, Bar] = {}

    def progress(stage: str, n: int, total: int | None) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.__exit__()
            bars[stage] = Bar(stage, "tok")
        bars[stage](n, total)

    class Stages:
        def __enter__(self):
            return progress

        def __exit__(self, *exc):
            for bar in bars.values():
                bar.__exit__()

    return Stages()


def _eval_config(suites, n_boot, max_prompts, heldout_tokens, inspect_tokens):
    from sparsescope.sae.study import EvalConfig

    return EvalConfig(suites=split_list(suites), n_boot=n_boot, max_prompts=max_prompts, heldout_tokens=heldout_tokens,
                      inspect_tokens=inspect_tokens)


@sae_app.command("train")
@friendly
def train_cmd(
    model: str = MODEL,
    site: str = typer.Option("blocks.6.mlp.hook_post", help="Site whose activations the SAE reconstructs."),
    arch: str = typer.Option("topk", "--arch", help="topk, batchtopk, jumprelu or standard."),
    k: int = typer.Option(64, help="TopK: features per token; BatchTopK: on average; JumpReLU: target L0."),
    d_sae: int = typer.Option(2048, help="Number of SAE features."),
    sparsity_coefficient: Optional[float] = typer.Option(None, help="JumpReLU L0 / Standard L1 coefficient."),
    train_tokens: int = typer.Option(150_000, help="Samples the trainer sees (cached tokens reused in passes)."),
    batch_size: int = typer.Option(256, help="Samples per optimiser step."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    max_minutes: Optional[float] = typer.Option(15.0, help="Stop training after this many minutes (wall time)."),
    cache_tokens: int = typer.Option(100_000, help="Tokens of training text to record (position 0 excluded)."),
    cache_sites: Optional[str] = typer.Option(None, help="More sites to record in the same pass, for later runs "
                                                         "with --cache-from."),
    cache_from: Optional[str] = typer.Option(None, help="Reuse the activation cache of an earlier sae run (id) or "
                                                        "a cache folder."),
    text: str = typer.Option("train", help="Training text: 'train' (bundled) or a UTF-8 file."),
    context: int = typer.Option(128, help="Tokens per training window."),
    seed: int = typer.Option(0, help="Seed of the SAE initialisation and shuffling."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate and inspect features when trained."),
    suites: Optional[str] = SUITES,
    n_boot: int = N_BOOT,
    max_prompts: Optional[int] = MAX_PROMPTS,
    heldout_tokens: int = HELDOUT,
    inspect_tokens: int = INSPECT,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Record a site's activations once, train an SAE on them with sae-lens, then evaluate it (default)."""
    from sparsescope.sae.train import SAETrainConfig
    from sparsescope.sae.workflow import CacheOptions, train_run
    from sparsescope.store import RunStore

    cfg = SAETrainConfig(site=site, architecture=arch, d_sae=d_sae, k=k, sparsity_coefficient=sparsity_coefficient,
                         train_tokens=train_tokens, batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes)
    cache = CacheOptions(text=text, tokens=cache_tokens, context=context, extra_sites=split_list(cache_sites) or [],
                         cache_from=cache_from)
    with _bars() as progress:
        eval_cfg = _eval_config(suites, n_boot, max_prompts, heldout_tokens, inspect_tokens) if evaluate else None
        run = train_run(RunStore(runs_dir), model, load, cfg, cache, eval_cfg, progress)
    sae_manifest = json.loads((run.path / "sae" / "sparsescope.json").read_text())
    out.print(f"trained {sae_manifest['tokens_trained']} samples in {sae_manifest['train_seconds']:.0f} s "
              f"({sae_manifest['tokens_per_s']:.0f} tok/s; load average {sae_manifest['load_average'][0]:.1f}) "
              f"→ {run.path / 'sae'}")
    _print_metrics(run)


@sae_app.command("eval")
@friendly
def eval_cmd(
    run_id: str = typer.Argument("last", help="An sae run id (prefix) or 'last'."),
    suites: Optional[str] = SUITES,
    n_boot: int = N_BOOT,
    max_prompts: Optional[int] = MAX_PROMPTS,
    heldout_tokens: int = HELDOUT,
    inspect_tokens: int = INSPECT,
    runs_dir: Optional[Path] = RUNS_DIR,
):
    """Re-evaluate a trained SAE: held-out metrics, ID vs OOD per family with CIs, features vs neurons."""
    from sparsescope.sae.workflow import eval_run
    from sparsescope.store import RunStore

    with _bars() as progress:
        cfg = _eval_config(suites, n_boot, max_prompts, heldout_tokens, inspect_tokens)
        run = eval_run(RunStore(runs_dir), run_id, load, cfg, progress)
    _print_metrics(run)


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
    from sparsescope.sae.study import feature_cards
    from sparsescope.sae.workflow import open_sae_run
    from sparsescope.show.sae import feature_card
    from sparsescope.store import RunStore

    run, sae, _ = open_sae_run(RunStore(runs_dir), run_id)
    for name in ("sae_features", "sae_contexts"):
        if name not in run.manifest["tables"]:
            raise UserError(f"run {run.run_id} has no {name} table; run `sparsescope sae eval {run.run_id}` first")
    logits = run.read("sae_logits") if "sae_logits" in run.manifest["tables"] else None
    try:
        wanted = [int(f) for f in split_list(feature)] if feature else None
    except ValueError:
        raise UserError(f"bad --feature {feature!r}; write feature indices separated by commas, e.g. 12,345") from None
    for card in feature_cards(run.read("sae_features"), run.read("sae_contexts"), logits, wanted, top,
                              sae.cfg.d_sae):
        show(feature_card(card))


def _print_metrics(run) -> None:
    from sparsescope.show.sae import metrics_table, probe_summary, write_page

    if "sae_metrics" not in run.manifest["tables"]:
        out.print(f"no evaluation stored; run `sparsescope sae eval {run.run_id}`")
        return
    show(metrics_table(run.read("sae_metrics"), run.run_id))
    if "sae_probe" in run.manifest["tables"]:
        show(probe_summary(run.read("sae_probe")))
    out.print(f"tables {', '.join(run.manifest['tables'])} → {run.path}")
    out.print(f"page: {write_page(run)}")

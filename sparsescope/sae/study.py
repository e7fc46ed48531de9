"""One SAE study, end to end: record the activation cache, train, evaluate, compare features with neurons, inspect
features — each step a function the CLI calls, each result a tidy table named as in the run-store contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.sae.activations import ActivationCache, text_windows
from sparsescope.sae.evaluate import WINDOW, feature_frame, measure, split_metrics, suite_windows
from sparsescope.sae.features import context_table, logit_table, top_activations
from sparsescope.sae.probe import prompt_frequencies, probe_table
from sparsescope.stats import percentile_interval

Progress = Callable[[int], None] | None


@dataclass
class EvalConfig:
    """What to evaluate an SAE on."""

    suites: list[str] | None = None  # prompt suites for ID vs OOD (None: the bundled default suites)
    max_prompts: int | None = None  # use at most this many prompts per suite (the first ones; None: all)
    window: int = WINDOW  # tokens per ID / OOD window (position 0 excluded)
    heldout: str = "heldout"  # held-out text for the headline metrics (bundled name or path)
    heldout_tokens: int = 4096  # cap on held-out tokens (windows of the training context)
    context: int = 128  # held-out window length (the training context)
    inspect_tokens: int = 50_000  # cached tokens searched for each feature's top contexts
    n_boot: int = 1000  # bootstrap resamples for the CIs (units: prompts; held-out: windows)
    seed: int = 0  # bootstrap and probe seed
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10])  # k-sparse probe sizes


def _describe(sae, site: str) -> dict:
    cfg = sae.cfg
    k = getattr(cfg, "k", None)
    return dict(site=site, architecture=cfg.architecture(), d_in=cfg.d_in, d_sae=cfg.d_sae,
                k=float(k) if k is not None else np.nan)


def evaluate(lm: LoadedModel, sae, site: str, suites: list, cfg: EvalConfig, heldout_text: str,
             progress: Progress = None) -> dict[str, pd.DataFrame]:
    """``sae_metrics`` (held-out text, each family, pooled ID and OOD, and OOD − ID differences, with CIs),
    ``sae_features`` (per feature density and mean activation per split/family) and ``sae_probe``."""
    info = _describe(sae, site)
    held = text_windows(lm, heldout_text, cfg.context, max(1, cfg.heldout_tokens // cfg.context))
    held_sums = measure(lm, sae, site, held, batch_size=4, progress=progress)
    wins = suite_windows(lm, [replace(s, prompts=s.prompts[: cfg.max_prompts]) for s in suites], cfg.window)
    sums = measure(lm, sae, site, wins.ids, batch_size=16, progress=progress)
    metric_rows, feature_frames, boots = [], [], {}

    def add(split: str, family: str, part: dict, units: np.ndarray) -> None:
        row, boots[split, family] = split_metrics(part, units, cfg.n_boot, cfg.seed)
        metric_rows.append(dict(info, split=split, family=family) | row)
        feature_frames.append(feature_frame(part).assign(split=split, family=family))

    add("heldout", "heldout", held_sums, np.arange(len(held)))
    for fam in dict.fromkeys(wins.family):
        rows = wins.family == fam
        add(str(wins.split[rows][0]), str(fam), _take(sums, rows), wins.unit[rows])
    for split in ("id", "ood"):
        rows = wins.split == split
        if rows.any():
            add(split, "all", _take(sums, rows), wins.unit[rows])
    if ("id", "all") in boots and ("ood", "all") in boots:
        metric_rows.append(_difference(info, metric_rows, boots))
    metrics = pd.DataFrame(metric_rows)
    features = pd.concat(feature_frames, ignore_index=True).assign(site=site)
    freqs = {units: prompt_frequencies(sums[name], sums["n"], wins.unit)[0]
             for units, name in (("sae", "fires"), ("neurons", "neuron_fires"))}
    _, first = np.unique(wins.unit, return_index=True)  # prompt_frequencies orders prompts the same way
    probe = probe_table(freqs, wins.split[first], wins.family[first], cfg.ks, cfg.n_boot, cfg.seed)
    return {"sae_metrics": metrics, "sae_features": features[["site", "feature", "split", "family", "density",
                                                                  "mean_act"]],
            "sae_probe": probe.assign(site=site)}


def _take(sums: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in sums.items()}


def _difference(info: dict, rows: list[dict], boots: dict) -> dict:
    """OOD − ID for every metric, the interval from independent resamples of the two splits."""
    ood = next(r for r in rows if r["split"] == "ood" and r["family"] == "all")
    idd = next(r for r in rows if r["split"] == "id" and r["family"] == "all")
    out = dict(info, split="ood-id", family="all", n_tokens=ood["n_tokens"] + idd["n_tokens"],
               n_units=ood["n_units"] + idd["n_units"], dead_frac=np.nan,
               dense_frac=ood["dense_frac"] - idd["dense_frac"])
    for name, b_ood in boots["ood", "all"].items():
        out[name] = ood[name] - idd[name]
        out[f"{name}_lo"], out[f"{name}_hi"] = percentile_interval(b_ood - boots["id", "all"][name])
    return out


def inspect(lm: LoadedModel, sae, site: str, cache: ActivationCache, n_top: int = 10, max_tokens: int = 50_000,
            progress: Progress = None) -> dict[str, pd.DataFrame]:
    """``sae_contexts`` (top activating contexts in the recorded corpus), ``sae_logits`` (logit effects) and the
    training-corpus densities (``sae_features`` rows with split ``train``)."""
    values, rows, density = top_activations(sae, cache.array(site), n_top, max_tokens, progress=progress)
    contexts = context_table(lm, site, values, rows, cache.locate, cache.tokens())
    train = pd.DataFrame(dict(site=site, feature=np.arange(len(density)), split="train",
                              family=cache.meta.get("text", "train"), density=density, mean_act=np.nan))
    return {"sae_contexts": contexts, "sae_logits": logit_table(lm, site, sae), "train_density": train}


def feature_cards(features: pd.DataFrame, contexts: pd.DataFrame, logits: pd.DataFrame | None,
                  wanted: list[int] | None, top: int, d_sae: int) -> list[dict]:
    """Per feature: title (densities per split), caption (logit effects) and its top contexts. Without ``wanted``:
    the ``top`` features whose firing frequency differs most between pooled OOD and ID prompts."""
    dens = features.pivot_table(index="feature", columns=["split", "family"], values="density")
    if wanted is None:
        if ("id", "all") not in dens or ("ood", "all") not in dens:
            raise UserError("the run has no pooled ID and OOD densities; pass --feature")
        wanted = (dens["ood", "all"] - dens["id", "all"]).abs().sort_values(ascending=False).index[:top].tolist()
    bad = [f for f in wanted if not 0 <= f < d_sae]
    if bad:
        raise UserError(f"feature {bad[0]} does not exist; this SAE has features 0..{d_sae - 1}")
    cards = []
    for f in wanted:
        row = dens.loc[f] if f in dens.index else pd.Series(dtype=float)
        parts = [f"{split if family in ('all', 'heldout') else family} {v:.2%}" for (split, family), v in row.items()
                 if family in ("all", "heldout") or split == "train"]
        caption = ""
        if logits is not None and len(logits):
            mine = logits[logits.feature == f]
            caption = "  ".join(f"{d} " + " ".join(repr(t) for t in mine[mine.direction == d].sort_values("rank")
                                                   ["token"].head(6)) for d in ("+", "-"))
        cards.append(dict(feature=f, title=f"feature {f} — density: " + ", ".join(parts),
                          caption=f"logit effect: {caption}" if caption else "",
                          contexts=contexts[contexts.feature == f].sort_values("rank")))
    return cards

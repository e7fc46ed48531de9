"""The Recorder: hooks every chosen site, runs prompts in right-padded batches, streams metrics into per-prompt sums.

Memory holds, per suite, one ``[prompts, metrics]`` sum per (layer, site) and one firing counter per neuron:
it grows with layers × width × prompts, never with tokens. Padding never counts: every statistic is masked by
the attention mask before it is summed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import parse_site
from sparsescope.record.metrics import FIRE_T, Metric, delta_frac, parse_metrics, token_metrics

PATTERN = "attn.hook_pattern"
BACKENDS = ("hooks", "nnsight")
LOGITS_LAYER, LOGITS_SITE = -1, "logits"


@dataclass
class RecordConfig:
    """What to record: sites (``mlp.hook_post`` for every layer or ``blocks.3.mlp.hook_post``), layers, metrics."""

    sites: list[str] | None = None  # site names, bare (every layer) or full `blocks.{l}.…`; None = every site
    layers: list[int] | None = None  # layers for the bare site names; None = every layer
    metrics: list[Metric] | str | None = None  # Metric list or "hoyer,near_zero_frac@0.1"; None = all defaults
    batch_size: int = 8  # prompts per forward pass (memory, not results)
    max_tokens: int = 256  # prompts are truncated to this many tokens
    token_budget: int | None = None  # cap on padded tokens (rows × longest) per forward pass; None = batch_size only
    sort_by_length: bool = True  # batch prompts of similar length together (less padding; same results)
    backend: str = "hooks"  # "hooks" (torch hooks) or "nnsight" (statistics reduced inside an nnsight trace)
    remote: bool = False  # with backend "nnsight": run the trace on NDIF (needs NDIF_API_KEY and a served model)
    neurons: bool = True  # also the per-neuron `neurons` table (fire_freq, mean_abs)
    logits: bool = True  # also per-prompt nll / max_prob rows (site "logits"): the OOD detector's baselines


@dataclass
class Recording:
    """What a Recorder returns, in memory (a `store.RunDir` is a run's folder on disk): the recorded tables
    (design §3): split-level ``activations``, per-prompt ``prompts``, per-neuron ``neurons``."""

    activations: pd.DataFrame
    prompts: pd.DataFrame
    neurons: pd.DataFrame
    run_id: str = ""
    config: dict = field(default_factory=dict)


class _SiteStats:
    """Streaming sums for one (layer, site) over one suite (float64 on CPU, wherever the layer runs)."""

    def __init__(self, n_prompts: int, n_metrics: int, n_delta: int):
        self.sums = torch.zeros(n_prompts, n_metrics, dtype=torch.float64)
        self.counts = torch.zeros(n_prompts, dtype=torch.float64)
        self.delta_sums = torch.zeros(n_prompts, n_delta, dtype=torch.float64)
        self.delta_counts = torch.zeros(n_prompts, dtype=torch.float64)
        self.fire: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None

    def add(self, part: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        """Add one batch's per-row sums (from :func:`site_sums` / :func:`pattern_sums`) to the prompts ``rows``."""
        for name in ("sums", "counts", "delta_sums", "delta_counts"):
            if name in part:
                getattr(self, name).index_add_(0, rows, part[name])
        if "fire" in part:
            if self.fire is None:
                self.fire, self.abs_sum = part["fire"], part["abs_sum"]
            else:
                self.fire += part["fire"]
                self.abs_sum += part["abs_sum"]


class Recorder:
    """Record sparsity metrics for a model over prompt suites; ``run`` returns a :class:`Recording`."""

    def __init__(self, lm: LoadedModel, config: RecordConfig | None = None):
        self.lm, self.config = lm, config or RecordConfig()
        if self.config.batch_size < 1 or self.config.max_tokens < 2:
            raise UserError("batch size must be ≥ 1 and max tokens ≥ 2; pass e.g. --batch-size 8 --max-tokens 256")
        if self.config.token_budget is not None and self.config.token_budget < 1:
            raise UserError("token budget must be ≥ 1 padded token per batch; pass e.g. --token-budget 4096")
        if self.config.backend not in BACKENDS or (self.config.remote and self.config.backend != "nnsight"):
            raise UserError(f"unknown backend {self.config.backend!r} (or --remote without nnsight); "
                            f"pass --backend {' or '.join(BACKENDS)}, and --remote only with --backend nnsight")
        given = self.config.metrics
        self.metrics = given if isinstance(given, list) and all(isinstance(m, Metric) for m in given) \
            else parse_metrics(given)
        self.static = [m for m in self.metrics if m.name != "delta_frac"]
        self.delta_t = [m.threshold for m in self.metrics if m.name == "delta_frac"]
        self.targets = self._targets()
        self.max_len = min(self.config.max_tokens, lm.context)

    def _targets(self) -> list[tuple[int, str]]:
        sites = self.lm.sites
        layers = self.config.layers if self.config.layers is not None else range(sites.n_layers)
        for layer in layers:
            sites.check_layer(layer)
        chosen: list[tuple[int, str]] = []
        for item in self.config.sites or list(sites.activation_sites):
            if item.startswith("blocks."):
                layer, site = parse_site(item)
                sites.check_layer(layer)
                sites.check_site(site)
                chosen.append((layer, site))
            else:
                sites.check_site(item)
                chosen += [(layer, item) for layer in layers]
        if not chosen:
            raise UserError("no sites selected; pass e.g. --sites mlp.hook_post,hook_resid_post")
        return list(dict.fromkeys(chosen))

    # -- tokenization -------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per prompt with the tokenizer's defaults, truncated to the context with a warning."""
        ids = [self.lm.tokenizer(t)["input_ids"] for t in texts]
        long = sum(len(i) > self.max_len for i in ids)
        if long:
            warnings.warn(f"{long} prompt(s) longer than {self.max_len} tokens were truncated (raise --max-tokens)")
        ids = [i[: self.max_len] for i in ids]
        if any(len(i) == 0 for i in ids):
            raise UserError("a prompt produced no tokens; remove empty prompts from the suite")
        return ids

    def groups(self, ids: list[list[int]]) -> list[list[int]]:
        """Prompt indices per forward pass: at most ``batch_size`` prompts and, with a token budget, at most that many
        padded tokens (rows × longest; a longer prompt runs alone). Sorted by length, padding is nearly nil."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if self.config.sort_by_length else range(len(ids))
        budget = self.config.token_budget or math.inf
        groups: list[list[int]] = []
        width = 0
        for i in order:
            n = len(ids[i])
            if groups and len(groups[-1]) < self.config.batch_size and (len(groups[-1]) + 1) * max(width, n) <= budget:
                groups[-1].append(i)
                width = max(width, n)
            else:
                groups.append([i])
                width = n
        return groups

    def batches(self, ids: list[list[int]]):
        """Right-padded batches ``(prompt indices, input_ids, valid mask)`` over :meth:`groups`."""
        pad = self.lm.tokenizer.pad_token_id or 0
        for rows in self.groups(ids):
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            valid = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                valid[r, : len(ids[i])] = True
            yield rows, input_ids, valid

    # -- the run ------------------------------------------------------------------------------------------------
    def record_suite(self, suite, run_id: str = "", progress: Callable[[int], None] | None = None) -> Recording:
        """Record one suite (a ``probes.Suite``); returns its rows of the three tables."""
        texts = [p.text for p in suite.prompts]
        if not texts:
            raise UserError(f"suite {suite.name!r} has no prompts; add prompts or drop the suite")
        ids = self.tokenize(texts)
        n_prompts = len(ids)
        stats = {key: _SiteStats(n_prompts, len(self.static), len(self.delta_t)) for key in self.targets}
        logit_sums = torch.zeros(n_prompts, 2, dtype=torch.float64)
        logit_counts = torch.zeros(n_prompts, dtype=torch.float64)
        if self.config.backend == "nnsight":
            from sparsescope.record.traced import run_traced

            run_traced(self, ids, stats, logit_sums, logit_counts, progress)
            return self._tables(suite, run_id, stats, logit_sums, logit_counts)
        handles = []
        batch: dict = {}
        try:
            for key in self.targets:
                handles.append(self.lm.sites.attach(*key, self._observer(key, stats[key], batch)))
            for rows, input_ids, valid in self.batches(ids):
                batch.update(valid=valid, rows=torch.tensor(rows))
                logits = self.lm.forward(input_ids, valid.long())
                if self.config.logits and logits is not None and self.lm.causal:
                    self._logit_stats(logits, input_ids, valid, batch["rows"], logit_sums, logit_counts)
                if progress:
                    progress(int(valid.sum()))
        finally:
            for h in handles:
                h.remove()
            batch.clear()
        return self._tables(suite, run_id, stats, logit_sums, logit_counts)

    def _observer(self, key: tuple[int, str], st: _SiteStats, batch: dict):
        site = key[1]

        @torch.no_grad()
        def observe(t) -> None:
            if t is None:
                if site == PATTERN:
                    raise UserError("attn.hook_pattern needs eager attention; load the model with "
                                    "attn_implementation='eager' or drop the site")
                return
            if site == PATTERN:
                st.add(pattern_sums(t, batch["valid"], self.static, self.lm.causal), batch["rows"])
            else:
                st.add(site_sums(t, batch["valid"], self.static, self.delta_t, self.config.neurons), batch["rows"])

        return observe

    @staticmethod
    def _logit_stats(logits, input_ids, valid, rows, sums, counts) -> None:
        """Per-prompt mean next-token NLL and max-softmax probability: the baseline OOD signals."""
        part = next_token_sums(logits, input_ids, valid)
        sums.index_add_(0, rows, part["sums"])
        counts.index_add_(0, rows, part["counts"])

    # -- tables -------------------------------------------------------------------------------------------------
    def _tables(self, suite, run_id: str, stats: dict, logit_sums, logit_counts) -> Recording:
        base = dict(run_id=run_id, model=self.lm.name, suite=suite.name, split=suite.split, level=int(suite.level))
        prompt_ids = np.array([p.id for p in suite.prompts], dtype=object)
        prompt_frames, split_rows, neuron_frames = [], [], []
        for (layer, site), st in stats.items():
            cols = [(m, st.sums[:, i], st.counts) for i, m in enumerate(self.static)]
            if site != PATTERN:
                cols += [(Metric("delta_frac", t), st.delta_sums[:, i], st.delta_counts) for i, t in enumerate(self.delta_t)]
            for m, s, c in cols:
                prompt_frames.append(_prompt_frame(prompt_ids, layer, site, m, s, c))
                total = float(c.sum())
                split_rows.append(dict(layer=layer, site=site, metric=m.name, threshold=m.threshold,
                                       value=float(s.sum()) / total if total else math.nan, n_tokens=int(total)))
            if st.fire is not None:
                n_tok = float(st.counts.sum())
                freq = (st.fire / n_tok).numpy()
                split_rows += [dict(layer=layer, site=site, metric="dead_frac", threshold=FIRE_T,
                                    value=float((st.fire == 0).double().mean()), n_tokens=int(n_tok)),
                               dict(layer=layer, site=site, metric="dense_frac", threshold=FIRE_T,
                                    value=float((freq > 0.5).mean()), n_tokens=int(n_tok))]
                neuron_frames.append(_neuron_frame(layer, site, freq, (st.abs_sum / n_tok).numpy()))
        if self.config.logits and logit_counts.sum() > 0:
            for i, name in enumerate(("nll", "max_prob")):
                prompt_frames.append(_prompt_frame(prompt_ids, LOGITS_LAYER, LOGITS_SITE, Metric(name),
                                                   logit_sums[:, i], logit_counts))
        prompts = pd.concat(prompt_frames, ignore_index=True)
        for k, v in reversed(base.items()):
            prompts.insert(0, k, v)
        prompts = prompts[_PROMPT_COLUMNS]
        activations = pd.DataFrame(split_rows)
        for k, v in reversed(base.items()):
            activations.insert(0, k, v)
        neurons = pd.concat(neuron_frames, ignore_index=True) if neuron_frames else _empty_neurons()
        for k in ("split", "suite", "run_id"):
            neurons.insert(0, k, base[k])
        return Recording(activations[_ACT_COLUMNS], prompts, neurons, run_id)

    def run(self, suites: Sequence, run_id: str = "", progress: Callable[[int], None] | None = None,
            skip: set[str] | None = None, on_suite: Callable[[str, Recording], None] | None = None) -> Recording:
        """Record every suite (skipping :func:`part_key`s in ``skip``, for resume); ``on_suite`` sees each part."""
        parts = []
        for suite in suites:
            if skip and part_key(suite) in skip:
                continue
            part = self.record_suite(suite, run_id, progress)
            if on_suite:
                on_suite(part_key(suite), part)
            parts.append(part)
        return concat_recordings(parts, run_id)


@torch.no_grad()
def site_sums(t: torch.Tensor, valid: torch.Tensor, static: list[Metric], delta_t: list[float],
              neurons: bool) -> dict[str, torch.Tensor]:
    """One batch at one site reduced to per-row sums (float64, CPU): ``sums`` [B, metrics] and ``counts`` [B] over
    valid tokens, ``delta_sums``/``delta_counts`` (positions ≥ 1), per-neuron ``fire``/``abs_sum`` [width].

    The only code that reads a site's activations; the hook backend calls it in a torch hook, the nnsight backend
    inside a trace (locally or on NDIF), so only these reduced tensors ever leave the device."""
    x = t.reshape(valid.shape[0], valid.shape[1], -1)  # also [B·T, d] (OPT flattens inside its MLP)
    valid = valid.to(x.device)
    flat = x[valid]
    lengths = valid.sum(1)
    owner = torch.arange(len(lengths), device=x.device).repeat_interleave(lengths)
    out = {"counts": lengths.double().cpu()}
    if static:
        out["sums"] = torch.zeros(len(lengths), len(static), dtype=torch.float64).index_add_(
            0, owner.cpu(), token_metrics(flat, static).double().cpu())
    if delta_t:
        d = delta_frac(x, delta_t)
        dvalid = valid.clone()
        dvalid[:, 0] = False
        out["delta_sums"] = (d * dvalid[..., None]).sum(1).double().cpu()
        out["delta_counts"] = dvalid.sum(1).double().cpu()
    if neurons:
        a = flat.float().abs()
        rms = a.pow(2).mean(1, keepdim=True).sqrt()
        out["fire"] = (a > FIRE_T * rms).sum(0).double().cpu()
        out["abs_sum"] = a.sum(0).double().cpu()
    return out


@torch.no_grad()
def pattern_sums(p: torch.Tensor, valid: torch.Tensor, static: list[Metric], causal: bool) -> dict[str, torch.Tensor]:
    """Attention rows: each (query, head) row over the keys the query can see; a token's value is the mean over
    heads. The first query of a causal model sees one key and is skipped (a 1-entry row has no sparsity)."""
    b, h, q, k = p.shape
    valid = valid.to(p.device)
    keys = valid[:, None, :k].expand(b, q, k)
    if causal:
        keys = keys & torch.ones(q, k, dtype=torch.bool, device=p.device).tril()[None]
    queries = valid[:, :q] & (keys.sum(-1) >= 2)
    out = {"counts": queries.sum(1).double().cpu()}
    if static:
        x = p.permute(0, 2, 1, 3)[queries]  # [Nq, H, K]
        mask = keys[queries][:, None, :].expand(-1, h, -1)
        vals = token_metrics(x.reshape(-1, k), static, mask.reshape(-1, k)).reshape(-1, h, len(static))
        owner = torch.arange(b).repeat_interleave(queries.sum(1).cpu())
        out["sums"] = torch.zeros(b, len(static), dtype=torch.float64).index_add_(0, owner, vals.mean(1).double().cpu())
    return out


@torch.no_grad()
def next_token_sums(logits: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row sums of next-token NLL and max-softmax probability (``sums`` [B, 2]) over ``counts`` [B] targets."""
    input_ids, valid = input_ids.to(logits.device), valid.to(logits.device)
    logits = logits[:, :-1]
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)  # bf16 → float32
    target_valid = valid[:, 1:]
    nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    maxp = logp.max(-1).values.exp()
    per = torch.stack([(nll * target_valid).sum(1), (maxp * target_valid).sum(1)], 1)
    return {"sums": per.double().cpu(), "counts": target_valid.sum(1).double().cpu()}


def part_key(suite) -> str:
    """A suite's unit of resumable work: ladder levels share a suite name, so the split is part of the key."""
    return f"{suite.name}|{suite.split}"


_ACT_COLUMNS = ["run_id", "model", "suite", "split", "level", "layer", "site", "metric", "threshold", "value", "n_tokens"]
_PROMPT_COLUMNS = ["run_id", "model", "suite", "split", "level", "prompt_id", "layer", "site", "metric", "threshold",
                   "value", "n_tokens"]


def _prompt_frame(prompt_ids, layer: int, site: str, m: Metric, sums, counts) -> pd.DataFrame:
    c = counts.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(c > 0, sums.numpy() / c, np.nan)
    return pd.DataFrame(dict(prompt_id=prompt_ids, layer=layer, site=site, metric=m.name, threshold=m.threshold,
                             value=value, n_tokens=c.astype(np.int64)))


def _neuron_frame(layer: int, site: str, freq: np.ndarray, mean_abs: np.ndarray) -> pd.DataFrame:
    n = len(freq)
    return pd.DataFrame(dict(layer=np.full(2 * n, layer, np.int32), site=site,
                             index=np.concatenate([np.arange(n), np.arange(n)]).astype(np.int32),
                             metric=np.repeat(["fire_freq", "mean_abs"], n),
                             value=np.concatenate([freq, mean_abs]).astype(np.float32)))


def _empty_neurons() -> pd.DataFrame:
    return pd.DataFrame(dict(layer=pd.Series(dtype=np.int32), site=pd.Series(dtype=str),
                             index=pd.Series(dtype=np.int32), metric=pd.Series(dtype=str),
                             value=pd.Series(dtype=np.float32)))


def concat_recordings(parts: Sequence[Recording], run_id: str = "") -> Recording:
    """Join suite parts into one :class:`Recording`."""
    if not parts:
        empty = pd.DataFrame(columns=_ACT_COLUMNS)
        return Recording(empty, pd.DataFrame(columns=_PROMPT_COLUMNS), _empty_neurons(), run_id)
    return Recording(*(pd.concat([getattr(p, t) for p in parts], ignore_index=True)
                 for t in ("activations", "prompts", "neurons")), run_id=run_id)


def record(model, suites, sites: list[str] | None = None, metrics: str | list[str] | None = None, **config) -> Recording:
    """Record sparsity of ``model`` (any ``load_model`` spec) over suites or a list of prompt strings."""
    from sparsescope.models import load_model
    from sparsescope.probes import Prompt, Suite

    lm = load_model(model)
    if suites and isinstance(suites[0], str):
        suites = [Suite("prompts", "id", [Prompt(f"p{i}", t, "prompts", "id") for i, t in enumerate(suites)],
                        source="user", license="user")]
    return Recorder(lm, RecordConfig(sites=sites, metrics=metrics, **config)).run(suites)

"""The Recorder: hooks every chosen site, runs prompts in right-padded batches, streams metrics into per-prompt sums.

Memory holds, per suite, one ``[prompts, metrics]`` sum per (layer, site) and one firing counter per neuron:
it grows with layers × width × prompts, never with tokens. Padding never counts: every statistic is masked by
the attention mask before it is summed.

Length and position control (the default): only a matched window of ``window`` tokens counts per prompt, the
same positions for every prompt of a suite, starting after position 0 and after any token prefix the whole suite
shares (a chat template's system prompt). Prompts are cut at the window's end (for a causal model this changes
nothing inside the window; for an encoder it gives every prompt the same context length), and prompts shorter
than the window are left out with a warning. ``window=0`` is the unmatched view: every token of the whole
prompt counts, position 0 included, so prompt length and position confound every comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sparsescope.errors import UserError, check_whole
from sparsescope.models.loading import LoadedModel
from sparsescope.kernels.stats import logit_values, site_values
from sparsescope.models.sites import layer_list, parse_site, site_list
from sparsescope.probes import as_suites, unique_suites
from sparsescope.record.metrics import FIRE_T, Metric, parse_metrics, stats_spec

PATTERN = "attn.hook_pattern"
BACKENDS = ("hooks", "nnsight")
LOGITS_LAYER, LOGITS_SITE = -1, "logits"


@dataclass
class RecordConfig:
    """What to record: sites (``mlp.hook_post`` for every layer or ``blocks.3.mlp.hook_post``), layers, metrics."""

    sites: list[str] | None = None  # names, bare (every layer) or `blocks.{l}.…`, list or "a,b"; None = every site
    layers: list[int] | None = None  # layers for the bare site names (list, 3 or "0,5,10-12"); None = every layer
    metrics: list[Metric] | str | None = None  # Metric list or "hoyer,near_zero_frac@0.1"; None = all defaults
    batch_size: int = 8  # prompts per forward pass (memory, not results)
    max_tokens: int = 256  # prompts are truncated to this many tokens
    token_budget: int | None = None  # cap on padded tokens (rows × longest) per forward pass; None = batch_size only
    sort_by_length: bool = True  # batch prompts of similar length together (less padding; same results)
    backend: str = "hooks"  # "hooks" (torch hooks) or "nnsight" (statistics reduced inside an nnsight trace)
    remote: bool = False  # with backend "nnsight": run the trace on NDIF (needs NDIF_API_KEY and a served model)
    neurons: bool = True  # also the per-neuron `neurons` table (fire_freq, mean_abs)
    logits: bool = True  # also per-prompt nll / max_prob / nll_per_byte rows (site "logits"): detector baselines
    window: int = 32  # tokens per prompt that count, at matched positions after the shared prefix; 0 = unmatched
    kernels: bool = True  # the fused C++ statistics kernel when it builds; False: its pure-torch twin (same numbers)

    def __post_init__(self) -> None:  # accept what a user naturally passes: "mlp.hook_post", 3, "0,5,10-12"
        self.sites, self.layers = site_list(self.sites), layer_list(self.layers)
        check_whole(self.batch_size, "batch size", 1, "pass e.g. --batch-size 8")
        check_whole(self.max_tokens, "max tokens", 2, "pass e.g. --max-tokens 256")
        if self.token_budget is not None:
            check_whole(self.token_budget, "token budget", 1, "pass e.g. --token-budget 4096 (padded tokens per batch)")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; pass --backend {' or '.join(BACKENDS)}")
        if self.remote and self.backend != "nnsight":
            raise UserError("--remote runs through nnsight; add --backend nnsight")


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
    """Streaming sums for one (layer, site) over one suite, on the activations' device.

    ``acc`` ``[prompts + 1, width]`` sums the fused kernel's per-token rows (static metrics, delta values, ok / bad /
    delta-ok counts) per prompt; the extra last row absorbs padding. ``fire`` and ``abs_sum`` count per neuron.
    """

    def __init__(self, n_prompts: int, width: int):
        self.n_prompts, self.width = n_prompts, width
        self.acc: torch.Tensor | None = None
        self.fire: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None

    def add(self, vals: torch.Tensor, index: torch.Tensor) -> None:
        if self.acc is None:
            self.acc = torch.zeros(self.n_prompts + 1, self.width, dtype=torch.float64, device=vals.device)
        self.acc.index_add_(0, index, vals.reshape(-1, self.width))

    def merge(self, part: dict[str, torch.Tensor | None], rows: torch.Tensor) -> None:
        """Add one batch's own sums (:func:`batch_sums`, its prompts numbered 0..B-1) to the prompts ``rows``."""
        self.add(part["acc"], rows.to(part["acc"].device))
        if part["fire"] is not None:
            fire, abs_sum = self.neuron_buffers(len(part["fire"]), part["fire"].device)
            fire += part["fire"]
            abs_sum += part["abs_sum"]

    def neuron_buffers(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fire is None:
            self.fire = torch.zeros(n, dtype=torch.float64, device=device)
            self.abs_sum = torch.zeros(n, dtype=torch.float64, device=device)
        return self.fire, self.abs_sum


class Recorder:
    """Record sparsity metrics for a model over prompt suites; ``run`` returns a :class:`Recording`."""

    def __init__(self, lm: LoadedModel, config: RecordConfig | None = None):
        self.lm, self.config = lm, config or RecordConfig()
        if self.config.window < 0 or self.config.window == 1:
            raise UserError(f"window {self.config.window} must be ≥ 2 tokens (or 0 for the unmatched whole-prompt "
                            "view); pass e.g. --window 32")
        self.metrics = parse_metrics(self.config.metrics)
        self.static = [m for m in self.metrics if m.name != "delta_frac"]
        self.delta_t = [m.threshold for m in self.metrics if m.name == "delta_frac"]
        self.spec, self.pattern_spec = stats_spec(self.metrics), stats_spec(self.metrics, delta=False)
        self._kernel = None if self.config.kernels else False  # None: the kernel where it is available
        self.state_bytes = 0  # bytes of the last suite's streaming sums (prompts × sites, never tokens)
        self.padded_tokens = 0  # tokens run through forward passes so far, right padding included (throughput)
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
        long = sum(len(i) > self.max_len for i in ids) if not self.config.window else 0
        if long:
            fix = f"raise --max-tokens, up to the model's context of {self.lm.context}" \
                if self.max_len < self.lm.context else f"the model's context is {self.lm.context} tokens"
            warnings.warn(f"{long} prompt(s) longer than {self.max_len} tokens were truncated ({fix})")
        if any(len(i) == 0 for i in ids):
            raise UserError("a prompt produced no tokens; remove empty prompts from the suite")
        return ids if self.config.window else [i[: self.max_len] for i in ids]

    def window_plan(self, suite, ids: list[list[int]]) -> tuple[int, np.ndarray]:
        """(start, kept): the first counted position and the prompts long enough for the window.

        start is 1 (position 0 sees only itself) or, when every prompt of the suite begins with the same longer
        token prefix (a chat template), that prefix's length. Unmatched view (window 0): start 0, all prompts.
        """
        w = self.config.window
        if not w:
            return 0, np.arange(len(ids))
        start = 1
        if len(ids) > 1:
            n = min(map(len, ids))
            shared = next((j for j in range(n) if len({i[j] for i in ids}) > 1), n)
            start = max(1, shared)
        else:
            warnings.warn(f"suite {suite.name!r} has a single prompt: no shared prefix can be detected, so its "
                          "window starts at position 1", stacklevel=3)
        if start + w > self.max_len:
            raise UserError(f"the window ends at token {start + w} of suite {suite.name!r}, beyond --max-tokens "
                            f"{self.max_len}; raise --max-tokens or lower --window")
        kept = np.flatnonzero([len(i) >= start + w for i in ids])
        longest = max(map(len, ids))
        if not len(kept):
            raise UserError(f"the {w}-token window (positions {start}–{start + w - 1}) is longer than every prompt "
                            f"of suite {suite.name!r} (longest {longest} tokens); pass --window "
                            f"{max(2, longest - start)}"
                            " or less, or --unmatched")
        if len(kept) < len(ids):
            warnings.warn(f"suite {suite.name!r}: {len(ids) - len(kept)} of {len(ids)} prompts are shorter than the "
                          f"window (positions {start}–{start + w - 1}) and were left out", stacklevel=3)
        return start, kept

    def planned_tokens(self, suites: Sequence) -> int:
        """Tokens the forward passes of ``suites`` will run (window plans checked, their warnings left to the run)."""
        total = 0
        for suite in suites:
            ids = self.tokenize([p.text for p in suite.prompts])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start, kept = self.window_plan(suite, ids)
            total += sum(min(len(ids[k]), start + self.config.window) if self.config.window else len(ids[k])
                         for k in kept)
        return total

    def _target_bytes(self, text: str, n_ids: int, start: int, end: int) -> int:
        """UTF-8 bytes of the text the predicted tokens start..end-1 (start ≥ 1) cover: the NLL-per-byte divisor."""
        tok = self.lm.tokenizer
        if getattr(tok, "is_fast", False):
            offsets = tok(text, return_offsets_mapping=True)["offset_mapping"][:n_ids]
            spans = [o for o in offsets[start:end] if o[1] > o[0]]
            return len(text[spans[0][0]: spans[-1][1]].encode()) if spans else 0
        ids = tok(text)["input_ids"]
        return len(tok.decode(ids[:end]).encode()) - len(tok.decode(ids[:start]).encode())

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
            self.padded_tokens += len(rows) * width
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
        start, kept = self.window_plan(suite, ids)
        lengths = [len(i) for i in ids]
        end = [start + self.config.window if self.config.window else n for n in lengths]
        ids = [ids[k][: end[k]] for k in kept]
        n_prompts = len(ids)
        stats = {key: _SiteStats(n_prompts, (self.pattern_spec if key[1] == PATTERN else self.spec).width)
                 for key in self.targets}
        logit_sums = torch.zeros(n_prompts, 2, dtype=torch.float64)
        logit_counts = torch.zeros(n_prompts, dtype=torch.float64)
        if self.config.backend == "nnsight":
            from sparsescope.record.traced import run_traced

            run_traced(self, ids, start, stats, logit_sums, logit_counts, progress)
        else:
            self._run_hooks(ids, start, stats, logit_sums, logit_counts, progress)
        self.state_bytes = sum(t.nbytes for st in stats.values() for t in (st.acc, st.fire, st.abs_sum) if t is not None)
        prompts = [suite.prompts[k] for k in kept]
        per_prompt = dict(prompt_tokens=np.array([lengths[k] for k in kept]), window_start=start,
                          window=self.config.window)
        if self.config.logits and logit_counts.sum() > 0:
            nbytes = [self._target_bytes(p.text, len(i), max(start, 1), len(i)) for p, i in zip(prompts, ids)]
            logit_bytes = torch.tensor(nbytes, dtype=torch.float64)
        else:
            logit_bytes = None
        return self._tables(suite, prompts, per_prompt, run_id, stats, logit_sums, logit_counts, logit_bytes)

    def _run_hooks(self, ids: list[list[int]], start: int, stats: dict, logit_sums, logit_counts,
                   progress: Callable[[int], None] | None) -> None:
        """The hook backend: a torch hook per site reduces each batch where the layer runs, into ``stats``."""
        handles = []
        batch: dict = {}
        try:
            for key in self.targets:
                handles.append(self.lm.sites.attach(*key, self._observer(key, stats[key], batch)))
            for rows, input_ids, valid in self.batches(ids):
                batch.clear()
                batch.update(batch_state(torch.tensor(rows), valid, start, len(ids)))
                logits = self.lm.forward(input_ids, valid.long())
                if self.config.logits and logits is not None and self.lm.causal:
                    sums, counts = next_token_sums(logits, input_ids, batch["count"])
                    logit_sums.index_add_(0, batch["rows"], sums)
                    logit_counts.index_add_(0, batch["rows"], counts)
                if progress:
                    progress(int(valid.sum()))
        finally:
            for h in handles:
                h.remove()
            batch.clear()

    def _observer(self, key: tuple[int, str], st: _SiteStats, batch: dict):
        if key[1] == PATTERN:
            return lambda t: observe_pattern(t, batch, st, self.pattern_spec, self.lm.causal, self._kernel)
        return lambda t: observe_site(t, batch, st, self.spec, self.config.neurons, self._kernel)

    # -- tables -------------------------------------------------------------------------------------------------
    def _tables(self, suite, prompts: list, per_prompt: dict, run_id: str, stats: dict, logit_sums, logit_counts,
                logit_bytes) -> Recording:
        base = dict(run_id=run_id, model=self.lm.name, suite=suite.name, split=suite.split, level=int(suite.level))
        prompt_ids = np.array([p.id for p in prompts], dtype=object)
        n_prompts, m = len(prompt_ids), len(self.static)
        blocks, split_rows, neuron_frames, nonfinite = [], [], [], []
        for (layer, site), st in stats.items():
            acc = st.acc[:n_prompts].cpu().numpy() if st.acc is not None else np.zeros((n_prompts, st.width))
            d = st.width - m - 3
            ok, bad, delta_ok = acc[:, m + d], acc[:, m + d + 1], acc[:, m + d + 2]
            metrics = self.static + [Metric("delta_frac", t) for t in self.delta_t[:d]]
            counts = np.concatenate([np.repeat(ok[:, None], m, 1), np.repeat(delta_ok[:, None], d, 1)], 1)
            blocks.append((layer, site, metrics, acc[:, : m + d], counts))
            totals, sums = counts.sum(0), acc[:, : m + d].sum(0)
            split_rows += [dict(layer=layer, site=site, metric=mt.name, threshold=mt.threshold,
                                value=sums[i] / totals[i] if totals[i] else math.nan, n_tokens=int(totals[i]))
                           for i, mt in enumerate(metrics)]
            if bad.sum() > 0:  # NaN/inf tokens: left out of every metric above, reported here
                n_seen = float(ok.sum() + bad.sum())
                split_rows.append(dict(layer=layer, site=site, metric="nonfinite_frac", threshold=math.nan,
                                       value=float(bad.sum()) / n_seen, n_tokens=int(n_seen)))
                nonfinite.append(f"blocks.{layer}.{site}")
            if st.fire is not None:
                n_tok = float(ok.sum())
                fire = st.fire.cpu().numpy()
                freq = fire / n_tok
                split_rows += [dict(layer=layer, site=site, metric="dead_frac", threshold=FIRE_T,
                                    value=float((fire == 0).mean()), n_tokens=int(n_tok)),
                               dict(layer=layer, site=site, metric="dense_frac", threshold=FIRE_T,
                                    value=float((freq > 0.5).mean()), n_tokens=int(n_tok))]
                neuron_frames.append((layer, site, freq, st.abs_sum.cpu().numpy() / n_tok))
        if nonfinite:
            warnings.warn(f"suite {suite.name!r}: NaN/inf activations at {len(nonfinite)} site(s) "
                          f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''}); those tokens are left "
                          "out of their metrics and counted as metric nonfinite_frac")
        if self.config.logits and logit_counts.sum() > 0:
            counts = logit_counts.numpy()
            with np.errstate(invalid="ignore", divide="ignore"):  # nll_per_byte = nll sum / bytes, n_tokens = tokens
                per_byte = np.where(logit_bytes.numpy() > 0, logit_sums[:, 0].numpy() / logit_bytes.numpy(), np.nan)
            sums = np.column_stack([logit_sums.numpy(), per_byte * counts])
            blocks.append((LOGITS_LAYER, LOGITS_SITE, [Metric("nll"), Metric("max_prob"), Metric("nll_per_byte")],
                           sums, np.repeat(counts[:, None], 3, 1)))
        table = _prompt_frame(prompt_ids, blocks)
        for k, v in reversed(base.items()):
            table.insert(0, k, v)
        n_frames = len(table) // max(len(prompt_ids), 1)
        sources = [getattr(p, "source", "") or f"{p.suite}/{p.id}" for p in prompts]
        table = table.assign(source_id=np.tile(np.array(sources, dtype=object), n_frames),
                             prompt_tokens=np.tile(per_prompt["prompt_tokens"], n_frames).astype(np.int64),
                             window_start=per_prompt["window_start"], window=per_prompt["window"])
        prompts = table[_PROMPT_COLUMNS]
        activations = pd.DataFrame(split_rows)
        for k, v in reversed(base.items()):
            activations.insert(0, k, v)
        neurons = _neuron_frame(neuron_frames)
        for k in ("split", "suite", "run_id"):
            neurons.insert(0, k, base[k])
        return Recording(activations[_ACT_COLUMNS], prompts, neurons, run_id)

    def run(self, suites: Sequence, run_id: str = "", progress: Callable[[int], None] | None = None,
            skip: set[str] | None = None, on_suite: Callable[[str, Recording], None] | None = None) -> Recording:
        """Record every suite (skipping :func:`part_key`s in ``skip``, for resume); ``on_suite`` sees each part."""
        parts = []
        for suite in unique_suites(suites):
            if skip and part_key(suite) in skip:
                continue
            part = self.record_suite(suite, run_id, progress)
            if on_suite:
                on_suite(part_key(suite), part)
            parts.append(part)
        return concat_recordings(parts, run_id)


def part_key(suite) -> str:
    """A suite's unit of resumable work: ladder levels share a suite name, so the split is part of the key."""
    return f"{suite.name}|{suite.split}"


_ACT_COLUMNS = ["run_id", "model", "suite", "split", "level", "layer", "site", "metric", "threshold", "value", "n_tokens"]
_PROMPT_COLUMNS = ["run_id", "model", "suite", "split", "level", "prompt_id", "layer", "site", "metric", "threshold",
                   "value", "n_tokens", "source_id", "prompt_tokens", "window_start", "window"]


def _prompt_frame(prompt_ids: np.ndarray, blocks: list) -> pd.DataFrame:
    """One row per (block, metric, prompt) from ``(layer, site, metrics, sums [P, K], counts [P, K])`` blocks, built
    as whole columns (a frame per metric and site would cost more than the recording)."""
    n = len(prompt_ids)
    sizes = [len(b[2]) * n for b in blocks]
    sums = np.concatenate([b[3].T.ravel() for b in blocks])
    counts = np.concatenate([b[4].T.ravel() for b in blocks])
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(counts > 0, sums / counts, np.nan)
    metrics = [mt for b in blocks for mt in b[2]]
    return pd.DataFrame(dict(prompt_id=np.tile(prompt_ids, len(metrics)),
                             layer=np.repeat([b[0] for b in blocks], sizes).astype(np.int64),
                             site=np.repeat(np.array([b[1] for b in blocks], dtype=object), sizes),
                             metric=np.repeat(np.array([mt.name for mt in metrics], dtype=object), n),
                             threshold=np.repeat([mt.threshold for mt in metrics], n).astype(np.float64),
                             value=value, n_tokens=counts.astype(np.int64)))


def batch_state(rows: torch.Tensor, valid: torch.Tensor, start: int, n_prompts: int) -> dict:
    """What the observers need of one batch: ``valid`` [B, T], ``count`` (the tokens whose values count: valid and
    at or after ``start``), ``rows`` (each row's prompt), and on the CPU ``(owner [B, T], index [B·T])``: a counted
    token's prompt (-1 otherwise) and its accumulator row (``n_prompts``, the spare row, otherwise)."""
    count = valid & (torch.arange(valid.shape[1]) >= start)
    owner = torch.where(count, rows[:, None], -1)
    return dict(valid=valid, count=count, rows=rows, cpu=(owner, torch.where(count, owner, n_prompts).flatten()))


@torch.no_grad()
def observe_site(t: torch.Tensor, batch: dict, st: _SiteStats, spec, neurons: bool, use_kernel: bool | None) -> None:
    """Reduce one site's activations ``t`` for one :func:`batch_state` into ``st``, on ``t``'s device (the C++
    kernel for CPU tensors, its torch twin elsewhere): the one place the recorder reads a site's activations."""
    valid = batch["valid"]
    x = t.reshape(valid.shape[0], valid.shape[1], -1)  # also [B·T, d] (OPT flattens inside its MLP)
    owner, index = _on_device(batch, x.device)
    fire, abs_sum = st.neuron_buffers(x.shape[-1], x.device) if neurons else (None, None)
    st.add(site_values(x[:, :, None], owner, spec, fire=fire, abs_sum=abs_sum, use_kernel=use_kernel), index)


@torch.no_grad()
def observe_pattern(p: torch.Tensor, batch: dict, st: _SiteStats, spec, causal: bool, use_kernel: bool | None) -> None:
    """Attention rows: each (query, head) row over the keys the query can see; a token's value is the mean over
    heads. Counted queries only; the first query of a causal model sees one key and is skipped (a 1-entry row
    has no sparsity). The masks depend only on the batch, so every layer shares them."""
    b, h, q, k = p.shape
    key = ("pattern", q, k, p.device)
    if key not in batch:
        valid, count, rows = batch["valid"], batch["count"], batch["rows"]
        keys = valid[:, None, :k].expand(b, q, k)
        if causal:
            keys = keys & torch.ones(q, k, dtype=torch.bool).tril()[None]
        queries = count[:, :q] & (keys.sum(-1) >= 2)
        owner = torch.where(queries, rows[:, None], -1)
        index = torch.where(queries, owner, st.n_prompts).flatten()
        batch[key] = tuple(v.to(p.device) for v in (keys, owner, index))
    keys, owner, index = batch[key]
    st.add(site_values(p.permute(0, 2, 1, 3), owner, spec, mask=keys, use_kernel=use_kernel), index)


@torch.no_grad()
def next_token_sums(logits: torch.Tensor, input_ids: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row, the sums of next-token NLL and max-softmax probability over the counted tokens (each predicted from
    the position before it) ``[B, 2]`` and their number ``[B]``, float64 on the CPU: the baseline OOD signals."""
    per = logit_values(logits[:, :-1], input_ids[:, 1:].to(logits.device), count[:, 1:].to(logits.device))
    per = per.sum(1).cpu()  # tokens with a NaN/inf logit are left out of both the sums and the count
    return per[:, :2], per[:, 2]


def _on_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's ``(owner [B, T], index [B·T])`` on ``device``, moved once per batch and device."""
    if device not in batch:
        batch[device] = tuple(v.to(device) for v in batch["cpu"])
    return batch[device]


def _neuron_frame(items: list[tuple[int, str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per (site, metric, neuron) from ``(layer, site, freq, mean_abs)`` items, built as whole columns."""
    if not items:
        return _empty_neurons()
    sizes = [2 * len(it[2]) for it in items]
    return pd.DataFrame(dict(
        layer=np.repeat([it[0] for it in items], sizes).astype(np.int32),
        site=np.repeat(np.array([it[1] for it in items], dtype=object), sizes),
        index=np.concatenate([np.tile(np.arange(len(it[2]), dtype=np.int32), 2) for it in items]),
        metric=np.concatenate([np.repeat(np.array(["fire_freq", "mean_abs"], dtype=object), len(it[2]))
                               for it in items]),
        value=np.concatenate([np.concatenate([it[2], it[3]]) for it in items]).astype(np.float32)))


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


def record(model, suites, sites: str | list[str] | None = None, metrics: str | list[str] | None = None,
           **config) -> Recording:
    """Record sparsity of ``model`` (any ``load_model`` spec) over prompts: one string, a list of strings, a
    ``probes.Suite`` or a list of them. ``sites``: one name, comma-separated names or a list (default all)."""
    from sparsescope.models import load_model

    suites = as_suites(suites)  # before the model loads: a bad argument fails fast
    config = RecordConfig(sites=sites, metrics=metrics, **config)
    return Recorder(load_model(model), config).run(suites)

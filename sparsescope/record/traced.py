"""The nnsight backend: the recorder's own reductions run inside an nnsight trace, locally or on NDIF.

``Recorder`` with ``backend="nnsight"`` hands its batches here. Each batch is one ``trace``: for every site the
trace reads the module's input or output and reduces it at once with the hook backend's own reductions
(``observe_site`` / ``observe_pattern``, the fused statistics kernel or its torch twin, and ``next_token_sums``)
into a batch-sized ``_SiteStats``, so only per-prompt sums and counts and per-neuron firing counts are ``save()``d
— never activations. Adding those batch sums to the suite's equals what the hooks accumulate, exactly.
With ``remote=True`` the same trace runs on NDIF (the National Deep Inference Fabric) and only those reduced
tensors are downloaded; the sparsescope package is shipped with the request by value (``nnsight.register``), as
NDIF does not install it.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable

import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel

NDIF_KEY_HELP = "set NDIF_API_KEY (a free key from https://login.ndif.us) or run `nnsight login`"


def check_remote(host: str | None = None, timeout: float = 10.0) -> None:
    """One-line errors before anything else happens: no API key, or NDIF not reachable from here."""
    from nnsight import CONFIG

    if not (os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY):
        raise UserError(f"--remote needs an NDIF API key: {NDIF_KEY_HELP}")
    host = host or CONFIG.API.HOST
    try:
        urllib.request.urlopen(f"{host}/status", timeout=timeout).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot reach NDIF at {host} ({reason}); check the network (or NDIF_HOST), "
                        "or drop --remote to trace locally") from None


def remote_model(repo_id: str) -> LoadedModel:
    """An NDIF-served model as a :class:`LoadedModel` with meta (empty) weights: the site map and tokenizer are
    local, the weights stay on NDIF. Needs the hub for the config and tokenizer."""
    from nnsight import LanguageModel

    from sparsescope.models import load_model

    check_remote()
    try:
        wrapper = LanguageModel(repo_id)
    except Exception as e:  # noqa: BLE001 — hub, config or tokenizer failures all mean the same to the user
        raise UserError(f"could not prepare {repo_id!r} for NDIF ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "pass a hub id NDIF serves (see docs/scaling.md)") from None
    lm = load_model(wrapper)
    lm.name, lm.source = repo_id, {"hub": repo_id, "ndif": True}
    return lm


def execution_order(lm: LoadedModel, targets: list[tuple[int, str]], fake: bool = False) -> list[tuple[int, str]]:
    """``targets`` in the order the forward pass reaches them (nnsight reads values in that order only).

    Found by one 2-token forward with torch hooks; ``fake`` runs it on fake tensors, for the remote model whose
    local weights are empty (meta). Accelerate-offloaded layers run for real (their hooks load the weights)."""
    seen: dict[tuple[int, str], int] = {}
    handles = []
    for key in targets:
        module, io, _ = lm.sites.hook(*key)
        def note(*_, key=key):
            seen.setdefault(key, len(seen))
        handles.append(module.register_forward_pre_hook(note) if io == "input" else module.register_forward_hook(note))
    try:
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            with FakeTensorMode(allow_non_fake_inputs=True):
                ids = torch.ones(1, 2, dtype=torch.long)
                lm.forward(ids, torch.ones_like(ids))
        else:
            ids = torch.ones(1, 2, dtype=torch.long)
            lm.forward(ids, torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in targets if k not in seen]
    if missing:
        raise UserError(f"site blocks.{missing[0][0]}.{missing[0][1]} is never reached by the forward pass; drop it")
    return sorted(targets, key=seen.__getitem__)


def _wrapper(lm: LoadedModel):
    """The nnsight envoy tree to trace through: the model's own ``LanguageModel`` when it came from one (remote),
    else a fresh ``NNsight`` around the local module."""
    from nnsight import NNsight

    return lm.wrapper if lm.wrapper is not None else NNsight(lm.model)


def trace_batch(wrapper, places: list, input_ids: torch.Tensor, valid: torch.Tensor, start: int, spec, pattern_spec,
                neurons: bool, causal: bool, logits: bool, remote: bool, use_kernel: bool | None = None,
                device: torch.device | None = None) -> dict:
    """One forward pass in an nnsight trace; returns ``{(layer, site): {"acc", "fire", "abs_sum"}}`` and
    ``{"logits": (sums, counts)}`` for the batch's own prompts ``0..B-1`` (tiny float64 CPU tensors).

    ``places`` are ``(key, envoy, io, extract)`` in execution order (``extract`` from ``SiteMap.hook``); tokens
    before position ``start`` do not count (the recorder's window). Everything inside the ``with`` block runs where
    the model runs (here, or on NDIF); only ``saved`` comes back. ``device``: where a local model takes its inputs
    (``LoadedModel.device``); the masks stay on the CPU for the bookkeeping."""
    import nnsight

    from sparsescope.record.recorder import PATTERN, _SiteStats, batch_state, next_token_sums, observe_pattern, \
        observe_site

    n = len(input_ids)
    batch = batch_state(torch.arange(n), valid, start, n)
    kwargs = {"remote": True} if remote else {}
    ids_in, mask_in = (input_ids, valid.long()) if device is None else (input_ids.to(device), valid.long().to(device))
    with torch.no_grad(), wrapper.trace(input_ids=ids_in, attention_mask=mask_in, **kwargs):
        saved = {}
        for key, envoy, io, extract in places:
            t = extract(envoy.output if io == "output" else envoy.input)
            if key[1] == PATTERN:
                if t is None:
                    raise UserError("attn.hook_pattern needs eager attention; load the model with "
                                    "attn_implementation='eager' or drop the site")
                st = _SiteStats(n, pattern_spec.width)
                observe_pattern(t, batch, st, pattern_spec, causal, use_kernel)
            else:
                st = _SiteStats(n, spec.width)
                observe_site(t, batch, st, spec, neurons, use_kernel)
            saved[key] = {"acc": st.acc[:n].cpu(), "fire": None if st.fire is None else st.fire.cpu(),
                          "abs_sum": None if st.abs_sum is None else st.abs_sum.cpu()}
        if logits:
            saved["logits"] = next_token_sums(wrapper.output.logits, input_ids, batch["count"])
        saved = nnsight.save(saved)
    return saved


def run_traced(rec, ids: list[list[int]], start: int, stats: dict, logit_sums: torch.Tensor,
               logit_counts: torch.Tensor, progress: Callable[[int], None] | None = None) -> None:
    """Record one suite's token ids (counted from position ``start``) with the nnsight backend into the recorder's
    streaming sums. Remote traces use the torch twin of the statistics kernel (nothing is compiled on NDIF)."""
    try:
        import nnsight
    except ImportError:
        raise UserError("--backend nnsight needs nnsight; pip install nnsight") from None
    if rec.config.remote:
        check_remote()
        nnsight.register("sparsescope")  # NDIF has no sparsescope: ship the reduction code with the request
    wrapper = _wrapper(rec.lm)
    envoys = {id(e._module): e for e in wrapper.modules()}
    places = []
    for key in execution_order(rec.lm, rec.targets, fake=rec.config.remote):
        module, io, extract = rec.lm.sites.hook(*key)
        places.append((key, envoys[id(module)], io, extract))
    logits = bool(rec.config.logits and rec.lm.causal)
    for rows, input_ids, valid in rec.batches(ids):
        saved = trace_batch(wrapper, places, input_ids, valid, start, rec.spec, rec.pattern_spec, rec.config.neurons,
                            rec.lm.causal, logits, rec.config.remote, False if rec.config.remote else rec._kernel,
                            None if rec.config.remote else rec.lm.device)
        rows_t = torch.tensor(rows)
        for key, part in saved.items():
            if key == "logits":
                logit_sums.index_add_(0, rows_t, part[0])
                logit_counts.index_add_(0, rows_t, part[1])
            else:
                stats[key].merge(part, rows_t)
        if progress:
            progress(int(valid.sum()))


def reduced_bytes_per_token(n_metrics: int, n_delta: int, widths: list[int], tokens_per_prompt: float,
                            batch_prompts: int, neurons: bool = True) -> dict[str, float]:
    """Bytes downloaded per token with the nnsight backend vs. shipping raw activations (float32 / bfloat16), for
    activation sites of the given ``widths`` (not attention patterns: those have no delta or neuron columns).

    Per batch and site: float64 sums ``[B, metrics + delta + 3]`` (the statistics kernel's row: metric sums, then
    ok / nonfinite / delta-ok token counts) and, with ``neurons``, per-neuron ``fire`` and ``abs_sum`` ``[width]``
    (float64); the last part is per batch, so it shrinks per token as batches grow. ``tokens_per_prompt`` is the
    tokens that run (the window's end with matched windows)."""
    tokens = tokens_per_prompt * batch_prompts
    reduced = sum(8 * batch_prompts * (n_metrics + n_delta + 3) + 16 * w * neurons for w in widths) / tokens
    return {"reduced": reduced, "raw_float32": 4.0 * sum(widths), "raw_bfloat16": 2.0 * sum(widths)}

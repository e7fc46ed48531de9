"""Feature inspection: top-activating contexts from the recorded corpus and logit effects through the unembedding.

Both are computed for every feature at once (chunked, so memory stays at ``chunk × d_sae`` floats) and stored as
the tidy tables ``sae_contexts`` and ``sae_logits`` that the explorer reads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import parse_site

RESIDUAL_LIKE = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
WRITES_THROUGH = {"mlp.hook_post": "mlp.W_out", "attn.hook_z": "attn.W_O"}  # site → the linear that writes it out


@torch.no_grad()
def top_activations(sae, data: np.ndarray, n_top: int = 10, max_tokens: int | None = 50_000, chunk: int = 2048,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values [d_sae, n_top], rows [d_sae, n_top], density [d_sae])`` over the first ``max_tokens`` cache rows:
    each feature's largest activations, the cache rows they occur at, and its firing frequency there."""
    n = len(data) if max_tokens is None else min(len(data), max_tokens)
    d_sae = sae.cfg.d_sae
    values = torch.full((n_top, d_sae), -torch.inf)
    rows = torch.full((n_top, d_sae), -1, dtype=torch.long)
    fires = torch.zeros(d_sae)
    for start in range(0, n, chunk):
        f = sae.encode(torch.from_numpy(np.asarray(data[start: min(n, start + chunk)], dtype=np.float32)))
        fires += (f > 0).sum(0)
        top = f.topk(min(n_top, len(f)), dim=0)
        both_v = torch.cat([values, top.values])
        both_r = torch.cat([rows, top.indices + start])
        keep = both_v.topk(n_top, dim=0).indices
        values, rows = both_v.gather(0, keep), both_r.gather(0, keep)
        if progress:
            progress(len(f))
    return values.T.numpy(), rows.T.numpy(), (fires / n).numpy()


def context_table(lm: LoadedModel, site: str, values: np.ndarray, rows: np.ndarray, locate, tokens: np.ndarray,
                  before: int = 12, after: int = 4) -> pd.DataFrame:
    """``sae_contexts`` rows: per feature and rank, the activation and its context with the token marked «…»
    (features that never fire have no rows). ``locate(rows) -> (window, position)`` maps cache rows."""
    tok = lm.tokenizer
    out = []
    for feature in range(len(values)):
        for rank, (value, row) in enumerate(zip(values[feature], rows[feature])):
            if not value > 0:
                break
            w, p = (int(a[0]) for a in locate(np.array([row])))
            ids = tokens[w]
            text = (tok.decode(ids[max(0, p - before): p]) + "«" + tok.decode(ids[p: p + 1]) + "»"
                    + tok.decode(ids[p + 1: p + 1 + after]))
            out.append((site, feature, rank, float(value), text.replace("\n", "⏎"), f"window-{w}", p))
    return pd.DataFrame(out, columns=["site", "feature", "rank", "activation", "text", "prompt_id", "position"])


def residual_directions(lm: LoadedModel, site: str, W_dec: torch.Tensor) -> torch.Tensor | None:
    """Each feature's decoder direction as written into the residual stream, or None where the site is not
    written to it by a single linear (e.g. ``mlp.hook_pre``)."""
    layer, name = parse_site(site)
    if name in RESIDUAL_LIKE:
        return W_dec
    if name in WRITES_THROUGH and WRITES_THROUGH[name] in lm.sites.weight_sites:
        return W_dec @ lm.sites.weight(layer, WRITES_THROUGH[name]).float().T
    return None


def unembedding(lm: LoadedModel) -> torch.Tensor | None:
    """``[vocab, d_model]`` unembedding with the final norm's scale folded in where the model has one; None for
    models without an LM head (encoders)."""
    if lm.kind == "hooked":
        W_U = lm.model.W_U.T
    else:
        head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
        if head is None or not lm.causal:
            return None
        W_U = head.weight
    norm = getattr(getattr(lm.model, "base_model", None), "norm", None)
    gamma = getattr(norm, "weight", None)
    return W_U.float() * gamma.float() if gamma is not None and gamma.shape[0] == W_U.shape[1] else W_U.float()


@torch.no_grad()
def logit_table(lm: LoadedModel, site: str, sae, n_tokens: int = 10, chunk: int = 256) -> pd.DataFrame:
    """``sae_logits`` rows: per feature the ``n_tokens`` tokens whose logits its decoder direction raises most
    (``+``) and lowers most (``-``) through the unembedding (direct effect, final norm's scale folded in)."""
    columns = ["site", "feature", "rank", "direction", "token", "effect"]
    W_U = unembedding(lm)
    dirs = residual_directions(lm, site, sae.W_dec.detach().float())
    if W_U is None or dirs is None or dirs.shape[1] != W_U.shape[1]:
        return pd.DataFrame(columns=columns)
    out = []
    for start in range(0, len(dirs), chunk):
        effect = dirs[start: start + chunk] @ W_U.T
        for sign, direction in ((1, "+"), (-1, "-")):
            top = (sign * effect).topk(n_tokens, dim=1)
            for i in range(len(effect)):
                for rank in range(n_tokens):
                    token = int(top.indices[i, rank])
                    out.append((site, start + i, rank, direction, lm.tokenizer.decode([token]),
                                float(effect[i, token])))
    return pd.DataFrame(out, columns=columns)

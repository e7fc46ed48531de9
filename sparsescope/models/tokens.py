"""Held-out and calibration text as fixed token chunks: the one place text is cut for evaluation and calibration."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsescope.models.loading import LoadedModel


def token_chunks(lm: LoadedModel, texts: str | Sequence[str], seq_len: int, max_tokens: int) -> torch.Tensor:
    """``[n, seq_len]`` token ids of ``texts`` (joined by blank lines, cut after ``max_tokens`` tokens).

    ``seq_len`` is capped by the model's context; the tail that does not fill a chunk is dropped, and a text
    shorter than one chunk becomes a single chunk of all its tokens (``[1, len]``; ``[1, 0]`` for an empty text).
    """
    text = texts if isinstance(texts, str) else "\n\n".join(texts)
    ids = torch.tensor(lm.tokenizer(text)["input_ids"][:max_tokens], dtype=torch.long)
    seq_len = min(seq_len, lm.context)
    if len(ids) < seq_len:
        return ids[None]
    return ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)

"""Quality of a (possibly modified) model: perplexity on held-out text and KL to the dense model's predictions.

The dense reference is computed once and kept (log-probabilities of every evaluated position), so that any
number of plans are compared against the same baseline on the same tokens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from sparsescope.errors import UserError, check_whole
from sparsescope.models.loading import LoadedModel
from sparsescope.models.tokens import token_chunks


class Evaluator:
    """Perplexity and KL(dense ‖ current) over fixed chunks of held-out text.

    ``texts`` are concatenated and cut into ``seq_len``-token chunks, at most ``max_tokens`` tokens in all.
    """

    def __init__(self, lm: LoadedModel, texts: str | Sequence[str], seq_len: int = 256, max_tokens: int = 4096,
                 batch_size: int = 4):
        if not lm.causal:
            raise UserError(f"{lm.name} is not a causal LM; perplexity and KL need next-token predictions")
        check_whole(seq_len, "seq len", 2, "each chunk needs a token and its successor; pass e.g. 256")
        check_whole(max_tokens, "eval tokens", 2)
        self.chunks = token_chunks(lm, texts, seq_len, max_tokens)
        if len(self.chunks) < 2 and self.chunks.numel() < 32:  # one short chunk: too few tokens to evaluate
            raise UserError("evaluation text is too short (under 32 tokens); pass a longer held-out text")
        if self.chunks.numel() <= max_tokens - self.chunks.shape[1]:  # a longer text would have filled more chunks
            warnings.warn(f"the evaluation text has only {self.chunks.numel():,} tokens (in chunks of "
                          f"{self.chunks.shape[1]}), fewer than the {max_tokens:,} asked for; evaluating on those")
        self.lm, self.batch_size = lm, batch_size
        self._dense: list[torch.Tensor] | None = None
        self.dense_ppl = math.nan

    @property
    def n_tokens(self) -> int:
        return int(self.chunks.shape[0] * (self.chunks.shape[1] - 1))

    def _logprobs(self) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(self.chunks), self.batch_size):
            x = self.chunks[i: i + self.batch_size]
            logits = self.lm.forward(x, torch.ones_like(x))
            out.append(torch.log_softmax(logits[:, :-1].float(), -1))
        return out

    def _nll(self, logps: list[torch.Tensor]) -> float:
        total = 0.0
        for i, lp in enumerate(logps):
            target = self.chunks[i * self.batch_size: (i + 1) * self.batch_size, 1:]
            total += float(-lp.gather(-1, target[..., None].to(lp.device)).sum(dtype=torch.float64))
        return total / self.n_tokens

    def reference(self) -> None:
        """Compute the dense baseline now (call with no plan applied)."""
        if getattr(self.lm, "_applied", None) is not None:
            raise UserError("compute the dense reference before applying a plan (or restore the model first)")
        self._dense = self._logprobs()
        self.dense_ppl = math.exp(self._nll(self._dense))

    def evaluate(self) -> dict[str, float]:
        """Perplexity, its change from dense, and mean per-token KL(dense ‖ current) in nats."""
        if self._dense is None:
            self.reference()
        logps = self._logprobs()
        ppl = math.exp(self._nll(logps))
        kl = sum(float((d.exp() * (d - c)).sum(dtype=torch.float64))
                 for d, c in zip(self._dense, logps)) / self.n_tokens
        return {"ppl": ppl, "delta_ppl": ppl - self.dense_ppl, "kl": max(kl, 0.0), "n_tokens": self.n_tokens}

"""Evaluator perplexity and KL against an independent numpy computation on the same chunks."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from sparsescope.eval import Evaluator
from tiny import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 3


def numpy_logprobs(lm, chunks):
    with torch.no_grad():
        logits = torch.cat([lm.model(input_ids=c[None]).logits for c in chunks]).double().numpy()
    return log_softmax(logits[:, :-1], axis=-1)  # [chunks, T-1, V], one chunk at a time: no batching involved


def test_perplexity_and_kl_equal_numpy():
    lm = tiny_model("llama", dtype=torch.float64)
    ev = Evaluator(lm, TEXT, seq_len=16, max_tokens=80, batch_size=3)  # 5 chunks in batches of 3 and 2
    ids = lm.tokenizer(TEXT)["input_ids"]
    assert ev.chunks.shape == (5, 16) and ev.chunks.flatten().tolist() == ids[:80]
    targets = ev.chunks[:, 1:].numpy()
    dense = numpy_logprobs(lm, ev.chunks)
    nll = -np.take_along_axis(dense, targets[..., None], -1).mean()
    ev.reference()
    assert ev.dense_ppl == pytest.approx(np.exp(nll), rel=1e-6) and ev.n_tokens == 5 * 15
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(0.5)  # any change of the model: a flatter next-token distribution
    cur = numpy_logprobs(lm, ev.chunks)
    got = ev.evaluate()
    ppl = np.exp(-np.take_along_axis(cur, targets[..., None], -1).mean())
    kl = (np.exp(dense) * (dense - cur)).sum(-1).mean()  # KL(dense ‖ current) per predicted token, nats
    # the Evaluator takes log_softmax in float32: agreement to ~1e-6 relative
    assert got["ppl"] == pytest.approx(ppl, rel=1e-6) and got["delta_ppl"] == pytest.approx(ppl - np.exp(nll), abs=1e-4)
    assert got["kl"] == pytest.approx(kl, rel=1e-4) and kl > 1e-4

"""The calibration |x| sample is uniform over every entry seen, not biased toward the last chunks."""

import string

import numpy as np
import torch
from scipy import stats as sps

from sparsescope.record import calibration
from tiny import tiny_model


def test_abs_sample_is_uniform_across_chunks(monkeypatch):
    lm = tiny_model("llama")
    monkeypatch.setattr(calibration, "SAMPLE", 2048)
    seq, n_chunks = 16, 8
    text = "".join(string.ascii_lowercase[i] * seq for i in range(n_chunks))  # a different character per chunk
    seen = []  # every |x| entry reaching W_out, in order: chunk k fills entries [k·16·64, (k+1)·16·64)
    module = lm.sites.linear(0, "mlp.W_out")
    h = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().abs().flatten().clone()))
    try:
        sample = calibration.calibrate(lm, text, seq_len=seq, layers=[0])["blocks.0.mlp.W_out"]["abs_sample"]
    finally:
        h.remove()
    assert len(seen) == n_chunks and len(sample) == 2048
    chunk_of = {v: k for k, x in enumerate(seen) for v in x.tolist()}
    per_chunk = [set(x.tolist()) for x in seen]
    assert sum(map(len, per_chunk)) == len(chunk_of)  # no value occurs in two chunks: a value names its chunk
    counts = np.bincount([chunk_of[v] for v in sample.tolist() if v in chunk_of], minlength=n_chunks)
    assert counts.sum() > 0.99 * 2048
    # equal chunk sizes: each chunk should hold 1/8 of the sample (the old halving pool kept ~1/2 from the last)
    assert sps.chisquare(counts).pvalue > 1e-3, counts
    assert counts.max() < 2048 / n_chunks * 1.3
    again = calibration.calibrate(lm, text, seq_len=seq, layers=[0])["blocks.0.mlp.W_out"]["abs_sample"]
    assert torch.equal(sample, again)  # seeded

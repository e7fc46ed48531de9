"""The recorder's tables against independent recomputation on captured tensors; padding never counts."""

import numpy as np
import pandas as pd
import pytest
import torch

from sparsescope.errors import UserError
from sparsescope.probes import Prompt, Suite
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import FIRE_T, Metric, default_metrics
from test_metrics import reference
from tiny import tiny_model

TEXTS = ["the cat sat on the mat", "hello", "a much longer prompt with many more characters in it!", "xyz 123"]


def suite(texts=TEXTS, name="s", split="id"):
    return Suite(name, split, [Prompt(f"p{i}", t, name, split) for i, t in enumerate(texts)], source="test",
                 license="test")


def key(df):
    return df.sort_values(["layer", "site", "metric", "threshold", "prompt_id"]).reset_index(drop=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_padded_batch_equals_one_at_a_time(arch):
    lm = tiny_model(arch, dtype=torch.float64)
    batched = Recorder(lm, RecordConfig(batch_size=4, window=0)).record_suite(suite())
    single = Recorder(lm, RecordConfig(batch_size=1, window=0)).record_suite(suite())
    a, b = key(batched.prompts), key(single.prompts)
    assert a[["layer", "site", "metric", "prompt_id", "n_tokens"]].equals(b[["layer", "site", "metric", "prompt_id", "n_tokens"]])
    np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(batched.neurons.value, single.neurons.value, rtol=1e-6, atol=1e-9)


def captured(lm, text, layer, site):
    """The site's tensor for one prompt, from a plain forward with our own hook."""
    module, io, extract = lm.sites.hook(layer, site)
    box = {}
    if io == "output":
        h = module.register_forward_hook(lambda m, a, o: box.__setitem__("x", extract(o)))
    else:
        h = module.register_forward_pre_hook(lambda m, a: box.__setitem__("x", a[0]))
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
    h.remove()
    return box["x"][0].double().numpy(), ids[0], logits[0]


def test_prompt_and_split_values_equal_numpy_on_captured_tensors():
    lm = tiny_model("llama")
    run = Recorder(lm, RecordConfig(batch_size=3, window=0)).record_suite(suite())
    metrics = [m for m in default_metrics() if m.name != "delta_frac"]
    for site in ("mlp.hook_post", "hook_resid_post", "attn.hook_z"):
        per_prompt, tokens = [], []
        for i, text in enumerate(TEXTS):
            x, _, _ = captured(lm, text, 1, site)
            want = np.array([[reference(row, m) for m in metrics] for row in x]).mean(0)
            rows = run.prompts[(run.prompts.prompt_id == f"p{i}") & (run.prompts.layer == 1) & (run.prompts.site == site)]
            for m, w in zip(metrics, want):
                got = rows[(rows.metric == m.name) & (rows.threshold.fillna(-1) == (-1 if np.isnan(m.threshold) else m.threshold))]
                assert got.value.item() == pytest.approx(w, rel=1e-5, abs=1e-6), (site, m)
                assert got.n_tokens.item() == len(x)
            per_prompt.append(want)
            tokens.append(len(x))
        split = run.activations[(run.activations.layer == 1) & (run.activations.site == site)
                                & (run.activations.metric == "hoyer")].value.item()
        hoyer_col = [m.name for m in metrics].index("hoyer")
        assert split == pytest.approx(np.average([p[hoyer_col] for p in per_prompt], weights=tokens), rel=1e-5)


def test_delta_neurons_and_dead_dense_equal_numpy():
    lm = tiny_model("gpt2")
    run = Recorder(lm, RecordConfig(batch_size=2, window=0)).record_suite(suite())
    xs = [captured(lm, t, 0, "mlp.hook_post")[0] for t in TEXTS]
    allx = np.concatenate(xs)
    rms = np.sqrt((allx**2).mean(1, keepdims=True))
    fire = (np.abs(allx) > FIRE_T * rms).mean(0)
    n = run.neurons[(run.neurons.layer == 0) & (run.neurons.site == "mlp.hook_post")]
    np.testing.assert_allclose(n[n.metric == "fire_freq"].value, fire, rtol=1e-5)
    np.testing.assert_allclose(n[n.metric == "mean_abs"].value, np.abs(allx).mean(0), rtol=1e-5)
    acts = run.activations[(run.activations.layer == 0) & (run.activations.site == "mlp.hook_post")]
    assert acts[acts.metric == "dead_frac"].value.item() == pytest.approx((fire == 0).mean())
    assert acts[acts.metric == "dense_frac"].value.item() == pytest.approx((fire > 0.5).mean())
    deltas = [(np.abs(x[1:] - x[:-1]) <= 0.1 * np.sqrt((x[1:] ** 2).mean(1, keepdims=True))).mean(1) for x in xs]
    want = np.concatenate(deltas).mean()
    got = acts[(acts.metric == "delta_frac") & (acts.threshold == 0.1)]
    assert got.value.item() == pytest.approx(want, rel=1e-5)
    assert got.n_tokens.item() == sum(len(x) - 1 for x in xs)


def test_attention_pattern_rows_and_logit_baselines():
    lm = tiny_model("llama", dtype=torch.float64)  # near-uniform random attention: Hoyer cancels in float32
    run = Recorder(lm, RecordConfig(batch_size=4, window=0, sites=["attn.hook_pattern"], metrics="hoyer,near_zero_frac@0.1"))\
        .record_suite(suite())
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            out = lm.model(input_ids=ids, output_attentions=True)
        p = out.attentions[0][0].double().numpy()  # [H, T, T]
        vals = [np.mean([reference(p[h, q, : q + 1], Metric("hoyer")) for h in range(p.shape[0])])
                for q in range(1, p.shape[1])]
        got = run.prompts[(run.prompts.prompt_id == f"p{i}") & (run.prompts.layer == 0) & (run.prompts.metric == "hoyer")]
        if vals:
            assert got.value.item() == pytest.approx(np.mean(vals), rel=1e-5)
        logp = torch.log_softmax(out.logits[0, :-1].double(), -1)
        nll = -logp.gather(-1, ids[0, 1:, None]).mean().item()
        got_nll = run.prompts[(run.prompts.prompt_id == f"p{i}") & (run.prompts.metric == "nll")]
        if len(TEXTS[i]) > 1:
            assert got_nll.value.item() == pytest.approx(nll, rel=1e-5)
            assert got_nll.layer.item() == -1 and got_nll.site.item() == "logits"


def test_hooks_are_removed_even_on_error():
    lm = tiny_model("llama")
    lm.model.config._attn_implementation = "sdpa"  # no attention weights: the pattern site must fail loudly
    with pytest.raises(UserError, match="eager"):
        Recorder(lm, RecordConfig(sites=["attn.hook_pattern"], window=0)).record_suite(suite())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_truncation_warns_and_bad_config_errors():
    lm = tiny_model("llama")
    with pytest.warns(UserWarning, match="truncated"):
        run = Recorder(lm, RecordConfig(max_tokens=8, window=0, sites=["mlp.hook_post"])).record_suite(suite())
    assert run.prompts.n_tokens.max() == 8
    with pytest.raises(UserError, match="unknown site"):
        Recorder(lm, RecordConfig(sites=["mlp.nope"]))
    with pytest.raises(UserError, match="layer 9"):
        Recorder(lm, RecordConfig(layers=[9]))
    with pytest.raises(UserError, match="no prompts"):
        Recorder(lm).record_suite(Suite("e", "id", [], "t", "t"))


def test_tables_are_tidy():
    lm = tiny_model("opt")
    run = Recorder(lm, RecordConfig(window=0)).run([suite(name="a"), suite(name="b", split="ood")], run_id="r1")
    assert list(run.activations.columns) == ["run_id", "model", "suite", "split", "level", "layer", "site", "metric",
                                             "threshold", "value", "n_tokens"]
    assert set(run.activations.split) == {"id", "ood"} and (run.activations.run_id == "r1").all()
    assert not run.activations.duplicated(["suite", "layer", "site", "metric", "threshold"]).any()
    assert isinstance(run.prompts, pd.DataFrame) and run.prompts.value.notna().all()

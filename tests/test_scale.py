"""Scaling: devices and dtypes, accelerate device maps, the nnsight backend, token-budget batching.

Every check compares against an independent path: the hook backend on the same model, the model on one device,
one prompt at a time, numpy on captured tensors, or the byte count of what a trace actually saved.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.errors import UserError
from sparsescope.models import load_model
from sparsescope.models.loading import resolve_device, resolve_dtype
from sparsescope.record import RecordConfig, Recorder
from sparsescope.record.metrics import default_metrics
from sparsescope.record.recorder import _SiteStats, batch_state, observe_site
from sparsescope.record.traced import check_remote, reduced_bytes_per_token
from test_metrics import reference
from test_recorder import TEXTS, captured, suite
from tiny import char_tokenizer, tiny_model

TABLES = ("activations", "prompts", "neurons")


def record(lm, **config):
    """The tiny prompts are short: whole prompts (window 0) unless a test asks for a window."""
    return Recorder(lm, RecordConfig(**{"window": 0} | config)).record_suite(suite())


def assert_same(a, b):
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("window", [0, 4])
@pytest.mark.parametrize("kernels", [True, False])
def test_nnsight_backend_equals_hook_backend_exactly(arch, window, kernels):
    """Both backends reduce with the same functions (the fused kernel or its torch twin), so the tables match to the
    bit: float32 on CPU, every site incl. attention patterns, every metric, neurons, logits, with and without a
    matched window."""
    lm = tiny_model(arch)
    hooks = record(lm, batch_size=3, window=window, kernels=kernels)
    traced = record(lm, batch_size=3, window=window, kernels=kernels, backend="nnsight")
    assert_same(hooks, traced)
    assert_same(hooks, record(lm, batch_size=3, window=window, kernels=kernels))  # tracing left the model as it was
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_nnsight_saves_only_reduced_tensors_of_the_stated_size():
    from sparsescope.record.traced import _wrapper, execution_order, trace_batch

    lm = tiny_model("llama")
    rec = Recorder(lm, RecordConfig(sites=["mlp.hook_post", "hook_resid_post"], batch_size=4, window=0))
    ids = rec.tokenize(TEXTS)
    rows, input_ids, valid = next(iter(rec.batches(ids)))
    wrapper = _wrapper(lm)
    envoys = {id(e._module): e for e in wrapper.modules()}
    places = [(k, envoys[id(lm.sites.hook(*k)[0])], lm.sites.hook(*k)[1], lm.sites.hook(*k)[2])
              for k in execution_order(lm, rec.targets)]
    saved = trace_batch(wrapper, places, input_ids, valid, 0, rec.spec, rec.pattern_spec, True, True, False, False)
    widths = [lm.model.config.intermediate_size if s == "mlp.hook_post" else lm.model.config.hidden_size
              for _, s in rec.targets]
    got = sum(t.nbytes for part in saved.values() for t in part.values())
    tokens = int(valid.sum())
    want = reduced_bytes_per_token(len(rec.static), len(rec.delta_t), widths, tokens / len(rows), len(rows))
    assert got / tokens == pytest.approx(want["reduced"])
    for key, part in saved.items():  # nothing shaped like an activation ([tokens, width]) came back
        assert all(t.dim() <= 2 and t.shape[0] in (len(rows), widths[rec.targets.index(key)]) for t in part.values())


def test_bfloat16_model_gives_float32_metrics_within_tolerance():
    fp32 = tiny_model("llama")
    bf16 = load_model((tiny_model("llama").model, char_tokenizer()), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    sites = ["mlp.hook_post", "hook_resid_post", "attn.hook_z"]
    a = record(fp32, sites=sites).activations
    b = record(bf16, sites=sites).activations
    assert a[["layer", "site", "metric", "n_tokens"]].equals(b[["layer", "site", "metric", "n_tokens"]])
    diff = (a.value - b.value).abs()
    # bf16 keeps 8 mantissa bits: a value within ~0.4 % of a threshold may land on the other side. Shares and
    # Hoyer (all in [0, 1]) of these tiny random models move by at most 0.03; most by far less.
    assert diff.max() < 0.03 and diff.median() < 0.01, a.assign(bf16=b.value, diff=diff).sort_values("diff").tail()


def test_bfloat16_activations_are_reduced_in_float_and_summed_in_float64():
    lm = load_model((tiny_model("llama").model, char_tokenizer()), dtype="bfloat16")
    run = record(lm, sites=["blocks.1.mlp.hook_post"])
    metrics = [m for m in default_metrics() if m.name != "delta_frac"]
    for i, text in enumerate(TEXTS):
        x, _, _ = captured(lm, text, 1, "mlp.hook_post")  # the bf16 activations, upcast exactly
        want = np.array([[reference(row, m) for m in metrics] for row in x]).mean(0)
        rows = run.prompts[(run.prompts.prompt_id == f"p{i}")]
        for m, w in zip(metrics, want):
            got = rows[(rows.metric == m.name) & (rows.threshold.fillna(-1) == (-1 if math.isnan(m.threshold)
                                                                                 else m.threshold))]
            assert got.value.item() == pytest.approx(w, rel=1e-5, abs=1e-6), m
    st = _SiteStats(2, Recorder(lm).spec.width)
    batch = batch_state(torch.arange(2), torch.ones(2, 3, dtype=torch.bool), 0, 2)
    for use_kernel in (None, False):  # the fused kernel (CPU) and its torch twin (every other device)
        observe_site(torch.randn(2, 3, 8, dtype=torch.bfloat16), batch, st, Recorder(lm).spec, True, use_kernel)
    assert all(t.dtype == torch.float64 for t in (st.acc, st.fire, st.abs_sum))


def test_device_map_split_with_disk_offload_records_the_same_statistics(model_dir, tmp_path):
    one = load_model(model_dir)
    split = load_model(model_dir, device_map={"model.embed_tokens": "cpu", "model.rotary_emb": "cpu",
                                              "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                                              "lm_head": "cpu"}, offload_folder=str(tmp_path))
    # layer 1 really is elsewhere: its weights are not in memory until accelerate's hook loads them for its forward
    assert split.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    assert split.placement["device_map"] == {"cpu": 5, "disk": 1}
    assert_same(record(one), record(split))
    assert_same(record(one), record(split, backend="nnsight"))


def test_token_budget_and_length_sorting_change_padding_not_results():
    lm = tiny_model("gpt2", dtype=torch.float64)
    texts = TEXTS * 3
    s = suite(texts)
    base = Recorder(lm, RecordConfig(batch_size=1, sort_by_length=False, window=0)).record_suite(s)
    for config in (dict(batch_size=4, sort_by_length=False), dict(batch_size=8, token_budget=60),
                   dict(batch_size=16)):
        rec = Recorder(lm, RecordConfig(**config, window=0))
        run = rec.record_suite(s)
        for name in TABLES:
            a, b = getattr(base, name), getattr(run, name)
            assert a.drop(columns="value").equals(b.drop(columns="value"))
            rtol = 1e-6 if name == "neurons" else 1e-9  # the neurons table is stored as float32
            np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=1e-12)
    ids = Recorder(lm).tokenize(texts)
    padded = {}
    for sort in (True, False):
        groups = Recorder(lm, RecordConfig(batch_size=4, sort_by_length=sort, token_budget=60)).groups(ids)
        assert sorted(i for g in groups for i in g) == list(range(len(ids)))
        assert all(len(g) == 1 or len(g) * max(len(ids[i]) for i in g) <= 60 for g in groups)
        padded[sort] = sum(len(g) * max(len(ids[i]) for i in g) for g in groups)
    assert padded[True] < padded[False]


def test_device_dtype_and_remote_errors_are_one_line(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU.*--device cpu"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))

    def no_half(*a, **k):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'\nmore')

    monkeypatch.setattr(torch.nn.functional, "layer_norm", no_half)
    with pytest.raises(UserError, match=r"float16 does not run on cpu here \(.*Half.*\); use --dtype float32$"):
        resolve_dtype("float16", torch.device("cpu"))
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(UserError, match="NDIF_API_KEY"):
        check_remote()
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    with pytest.raises(UserError, match="cannot reach NDIF at http://127.0.0.1:9"):
        check_remote(host="http://127.0.0.1:9", timeout=2)


def test_cli_scan_nnsight_records_placement_and_throughput(model_dir, tmp_path):
    runner = CliRunner()
    common = ["scan", "--model", str(model_dir), "--suites", "prose", "--max-tokens", "24", "--window", "8", "--sites",
              "mlp.hook_post", "--runs-dir", str(tmp_path), "--no-report"]
    res = runner.invoke(app, [*common, "--backend", "nnsight", "--token-budget", "64", "--device", "auto"])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["placement"]["dtype"] == "float32" and manifest["config"]["backend"] == "nnsight"
    t = manifest["throughput"]
    assert t["tokens"] > 0 and t["tokens_per_s"] > 0 and t["padded_tokens"] >= t["tokens"]
    assert 0 <= t["padding_frac"] < 1
    res = runner.invoke(app, [*common, "--dtype", "int3"])
    assert res.exit_code == 2 and "unknown dtype" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_language_model_wrapper_the_remote_path_uses_equals_hooks_on_smollm2():
    """`--remote` traces through nnsight's LanguageModel (not a bare NNsight envoy): run that wrapper locally."""
    from nnsight import LanguageModel

    lm = load_model("smollm2-135m")
    sites = ["blocks.7.hook_resid_pre", "blocks.2.mlp.hook_post", "blocks.5.attn.hook_pattern"]
    hooks = record(lm, sites=sites, batch_size=4)
    wrapped = load_model(LanguageModel(lm.model, tokenizer=lm.tokenizer))
    assert type(wrapped.wrapper).__name__ == "LanguageModel"
    traced = record(wrapped, sites=sites, batch_size=4, backend="nnsight")
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(hooks, name).drop(columns="model", errors="ignore"),
                                      getattr(traced, name).drop(columns="model", errors="ignore"), check_exact=True)

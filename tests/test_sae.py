"""SAE glue: activation cache, training through sae-lens, evaluation metrics, reload, bad input (tiny random models)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sparsescope.errors import UserError
from sparsescope.probes import load_suites, load_text
from sparsescope.sae.activations import ActivationCache, record_cache, shuffled_batches, token_windows
from sparsescope.sae.evaluate import _recon_sums, check_width, measure, split_metrics, suite_windows
from sparsescope.sae.probe import k_sparse_probe
from sparsescope.sae.train import SAETrainConfig, load_sae, train, training_sae
from tiny import tiny_model

SITE = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def cache(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("sae") / "activations"
    return record_cache(lm, [SITE, "blocks.0.hook_resid_post"], load_text("train")[:12000], path, context=32,
                        max_tokens=3000, text_name="train")


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    cfg = SAETrainConfig(site=SITE, d_sae=128, k=8, train_tokens=6400, batch_size=128, lr=3e-3, seed=0)
    path = tmp_path_factory.mktemp("sae") / "sae"
    manifest = {"model": "tiny", "model_revision": "abc", "data": cache.meta, "seed": 0}
    return cfg, train(shuffled_batches(cache.array(SITE), 128, buffer_tokens=1024), 64, cfg, path, manifest), manifest


def test_cache_rows_equal_a_plain_forward(lm, cache):
    """Cache rows (float16) are the residual stream of an independent HF forward, position 0 left out."""
    tokens = cache.tokens()
    hidden = lm.model(torch.tensor(tokens[:2], dtype=torch.long), output_hidden_states=True).hidden_states[1]
    want = hidden[:, 1:].reshape(-1, hidden.shape[-1]).detach().numpy()
    got = np.asarray(cache.array("blocks.0.hook_resid_post")[: len(want)], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    assert cache.n_tokens == len(tokens) * 31
    assert not list(cache.path.parent.glob(".*tmp"))


def test_windows_and_shuffle_visit_every_row_once():
    assert token_windows(list(range(70)), 32) == [list(range(32)), list(range(32, 64))]
    data = np.arange(5000, dtype=np.float32).repeat(2).reshape(-1, 2)
    it = shuffled_batches(data, batch_size=100, buffer_tokens=1024, chunk=256, seed=1)
    seen = torch.cat([next(it) for _ in range(50)])[:, 0].numpy()
    assert sorted(seen) == list(range(5000))
    assert not np.array_equal(seen, np.arange(5000))


def test_training_lowers_reconstruction_error_and_topk_l0_is_k(cache, trained):
    cfg, result, _ = trained
    x = torch.from_numpy(np.asarray(cache.array(SITE)[-500:], dtype=np.float32))
    torch.manual_seed(0)
    untrained = training_sae(cfg, 64, {})
    before = (untrained.decode(untrained.encode(x)) - x).pow(2).sum(-1).mean()
    feats = result.sae.encode(x)
    after = (result.sae.decode(feats) - x).pow(2).sum(-1).mean()
    assert after < 0.5 * before
    assert after < (x - x.mean(0)).pow(2).sum(-1).mean()  # beats predicting the mean
    assert ((feats > 0).sum(-1) == cfg.k).all()


def test_reload_encodes_identically_and_manifest_round_trips(trained):
    from sae_lens import SAE

    cfg, result, manifest = trained
    x = torch.randn(20, 64)
    again, stored = load_sae(result.path)
    assert torch.equal(again.encode(x), result.sae.encode(x))
    assert torch.equal(SAE.load_from_disk(result.path).encode(x), result.sae.encode(x))
    assert {k: stored[k] for k in manifest} == json.loads(json.dumps(manifest))
    assert stored["site"] == SITE and stored["train"]["k"] == cfg.k and stored["tokens_trained"] == 6400


class _Identity:
    def encode(self, x):
        return x

    def decode(self, f):
        return f


class _Zero(_Identity):
    def decode(self, f):
        return torch.zeros_like(f)


def test_ce_recovered_is_one_for_identity_and_zero_for_ablation(lm):
    windows = torch.randint(3, 100, (6, 16))
    units = np.arange(6)
    ident, _ = split_metrics(measure(lm, _Identity(), SITE, windows), units, n_boot=50)
    zero, _ = split_metrics(measure(lm, _Zero(), SITE, windows), units, n_boot=50)
    assert ident["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-9)
    assert ident["kl_score"] == pytest.approx(1.0, abs=1e-9)
    assert ident["explained_variance"] == pytest.approx(1.0, abs=1e-9)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert zero["kl_score"] == pytest.approx(0.0, abs=1e-9)
    assert zero["ce_zero"] > zero["ce_clean"]


def test_reconstruction_metrics_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (3, 7, 5))
    x_hat = x + rng.normal(0, 0.7, x.shape)
    feats = torch.from_numpy(rng.normal(size=(3, 7, 4))).float()
    sums = {k: v.double().numpy() for k, v in _recon_sums(torch.from_numpy(x).float(), torch.from_numpy(x_hat).float(),
                                                           feats).items()}
    row, _ = split_metrics(sums, np.arange(3), n_boot=10)
    flat, flat_hat = x.reshape(-1, 5), x_hat.reshape(-1, 5)
    ev = 1 - ((flat - flat_hat) ** 2).sum() / ((flat - flat.mean(0)) ** 2).sum()
    cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(flat, flat_hat)])
    assert row["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert row["mse"] == pytest.approx(((flat - flat_hat) ** 2).sum(1).mean(), rel=1e-5)
    assert row["cosine"] == pytest.approx(cos, rel=1e-5)
    assert row["l0"] == pytest.approx((feats.numpy() > 0).sum(-1).mean())


def test_k_sparse_probe_finds_a_planted_unit():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 40))
    X[:, 17] += 3 * y
    scores, accuracy = k_sparse_probe(X, y, k=1)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, scores) > 0.95 and accuracy > 0.85


def test_suite_windows_are_length_matched(lm):
    wins = suite_windows(lm, load_suites(["prose", "random_tokens"], tokenizer=lm.tokenizer), 32)
    assert wins.ids.shape[1] == 32 and set(wins.split) == {"id", "ood"}
    assert len(wins.unit) == len(wins.ids)


def test_bad_input_is_one_user_error(lm, cache, trained, tmp_path):
    with pytest.raises(UserError, match="unknown site"):
        record_cache(lm, ["blocks.1.mlp.nope"], "some text " * 50, tmp_path / "c")
    with pytest.raises(UserError, match="layer 9 does not exist"):
        record_cache(lm, ["blocks.9.mlp.hook_post"], "some text " * 50, tmp_path / "c")
    assert not any(tmp_path.iterdir())
    with pytest.raises(UserError, match="fewer than one batch"):
        next(shuffled_batches(np.zeros((10, 4), np.float16), batch_size=64))
    _, result, _ = trained
    with pytest.raises(UserError, match="64-wide vectors but blocks.0.hook_resid_post"):
        check_width(result.sae, lm, "blocks.0.hook_resid_post")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in result.path.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt"):
        load_sae(broken)
    with pytest.raises(UserError, match="not an SAE checkpoint"):
        load_sae(tmp_path)
    with pytest.raises(UserError, match="no site"):
        ActivationCache.open(cache.path).array("blocks.0.mlp.hook_post")


@pytest.mark.parametrize("args, message", [
    (["--site", "blocks.1.mlp.nope"], "unknown site"),
    (["--text", "SHORT", "--context", "16"], "fewer than one batch"),
    (["--text", "SHORT"], "fewer than one window"),
    (["--arch", "gated"], "unknown SAE architecture"),
    (["--k", "500", "--d-sae", "128"], "exceeds the SAE width"),
])
def test_cli_bad_input_writes_nothing(model_dir, tmp_path, args, message):
    from sparsescope.cli import app

    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    args = [str(short) if a == "SHORT" else a for a in args]
    runs = tmp_path / "runs"
    res = CliRunner().invoke(app, ["sae", "train", "--model", str(model_dir), "--runs-dir", str(runs),
                                   "--batch-size", "64", "--site", SITE, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_train_eval_features_end_to_end(model_dir, tmp_path):
    from sparsescope.cli import app
    from sparsescope.store import RunStore

    runs = tmp_path / "runs"
    res = CliRunner().invoke(app, ["sae", "train", "--model", str(model_dir), "--site", SITE, "--k", "4",
                                   "--d-sae", "64", "--train-tokens", "1024", "--batch-size", "128",
                                   "--cache-tokens", "1500", "--context", "32", "--suites", "prose,random_tokens,code",
                                   "--n-boot", "50", "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    run = RunStore(runs).latest(kind="sae")
    assert run.status == "complete"
    m = run.read("sae_metrics")
    assert {"heldout", "id", "ood", "ood-id"} <= set(m.split)
    assert (m.loc[m.split != "ood-id", "l0"] == 4).all()
    assert {"sae", "neurons"} == set(run.read("sae_probe").units)
    contexts = run.read("sae_contexts")
    assert contexts.text.str.contains("«").all()
    assert len(run.read("sae_logits")) > 0
    res = CliRunner().invoke(app, ["sae", "features", run.run_id, "--feature", "0,3", "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    assert "feature 3" in res.output
    res = CliRunner().invoke(app, ["sae", "features", run.run_id, "--feature", "64", "--runs-dir", str(runs)])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["sae", "eval", run.run_id, "--suites", "prose,random_tokens", "--n-boot", "20",
                                   "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    assert set(run.read("sae_metrics").family) == {"heldout", "prose", "random_tokens", "all"}


@pytest.mark.parametrize("arch, saved_as", [("batchtopk", "jumprelu"), ("jumprelu", "jumprelu"),
                                            ("standard", "standard")])
def test_other_architectures_train_save_and_reload(cache, tmp_path, arch, saved_as):
    cfg = SAETrainConfig(site=SITE, architecture=arch, d_sae=64, k=8, train_tokens=1024, batch_size=128, lr=3e-3)
    result = train(shuffled_batches(cache.array(SITE), 128, buffer_tokens=1024), 64, cfg, tmp_path / "sae", {})
    again, stored = load_sae(result.path)
    assert again.cfg.architecture() == saved_as and stored["train"]["architecture"] == arch
    x = torch.from_numpy(np.asarray(cache.array(SITE)[:50], dtype=np.float32))
    assert torch.equal(again.encode(x), result.sae.encode(x))


@pytest.mark.slow
def test_smollm2_cache_matches_hidden_states(tmp_path):
    """On the real model: the cached residual stream after block 6 equals HF's hidden_states[7], position 0 left
    out, and the forward that stopped after block 6 recorded the MLP site at its real width."""
    from sparsescope import load_model

    lm = load_model("smollm2-135m")
    cache = record_cache(lm, ["blocks.6.mlp.hook_post", "blocks.6.hook_resid_post"], load_text("heldout"),
                         tmp_path / "c", context=32, max_tokens=62)
    tokens = torch.tensor(cache.tokens(), dtype=torch.long)
    hidden = lm.model(tokens, output_hidden_states=True).hidden_states[7][:, 1:].reshape(-1, 576).detach()
    got = torch.from_numpy(np.asarray(cache.array("blocks.6.hook_resid_post"), dtype=np.float32))
    torch.testing.assert_close(got, hidden, rtol=2e-3, atol=2e-2)
    assert cache.array("blocks.6.mlp.hook_post").shape == (62, 1536)


def test_bootstrap_sums_resamples_units_like_a_loop():
    """Ratio-of-sums statistics: the point value is the pooled ratio and each replicate equals a brute-force
    recomputation on the same resampled units."""
    from sparsescope.stats import bootstrap_sums

    rng = np.random.default_rng(3)
    num, den = rng.uniform(1, 5, 12), rng.uniform(5, 9, 12)
    point, boots = bootstrap_sums({"a": num, "b": den}, lambda s: {"r": s["a"] / s["b"]}, n_boot=40, seed=7)
    assert point["r"] == pytest.approx(num.sum() / den.sum())
    draws = np.random.default_rng(7).integers(0, 12, size=(40, 12))
    loop = np.array([num[d].sum() / den[d].sum() for d in draws])
    np.testing.assert_allclose(boots["r"], loop)

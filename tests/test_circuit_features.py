"""SAE-feature nodes: the SAE splice leaves the model exactly unchanged, feature patches equal hand-computed site
edits, attribution tracks exact patching, and an SAE that does not fit the model is one UserError.

References are independent of the code under test: raw forward hooks that write the site's value computed by hand
from the SAE's weights, or the model's own activations on the corrupted prompt.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from tiny import tiny_model
from typer.testing import CliRunner

from sparsescope.circuits import attribution
from sparsescope.circuits.features import FeaturePatcher
from sparsescope.circuits.mask import MaskConfig
from sparsescope.circuits.patch import parse_components
from sparsescope.circuits.study import (DiscoverConfig, ablate, discover, load_circuit, make_patcher, save_circuit,
                                       score_circuit)
from sparsescope.errors import UserError
from sparsescope.probes import load_text
from sparsescope.sae.activations import record_cache, shuffled_batches
from sparsescope.sae.train import SAETrainConfig, train
from test_circuits import char_task

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    lm = tiny_model("llama", seed=1)
    lm.revision = "tiny-seed-1"  # as a loaded checkpoint has (tiny models are built in memory, without one)
    return lm


@pytest.fixture(scope="module")
def sae_dir(lm, tmp_path_factory):
    """A TopK SAE (64 features, k 8) trained briefly on the tiny model's layer-0 residual stream."""
    root = tmp_path_factory.mktemp("feat")
    cache = record_cache(lm, [SITE], load_text("train")[:6000], root / "activations", context=32, max_tokens=1500,
                         text_name="train")
    cfg = SAETrainConfig(site=SITE, d_sae=64, k=8, train_tokens=3200, batch_size=128, lr=3e-3, seed=0)
    manifest = {"model": lm.name, "model_revision": lm.revision, "seed": 0}
    train(shuffled_batches(cache.array(SITE), 128, buffer_tokens=1024), 32, cfg, root / "sae", manifest)
    return root / "sae"


def site_metric(lm, data, value=None):
    """Per-prompt logit difference with the layer-0 block output replaced by ``value(prompt index, hidden)``."""
    out = []
    block = lm.model.model.layers[0]
    for i, p in enumerate(data.pairs):
        def post(m, args, o, i=i):
            h = o[0] if isinstance(o, tuple) else o
            new = value(i, h)
            return (new, *o[1:]) if isinstance(o, tuple) else new
        handle = block.register_forward_hook(post) if value else None
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([p.clean])).logits[0, -1]
        finally:
            if handle:
                handle.remove()
        out.append(logits[p.good[0]] - logits[p.bad[0]])
    return torch.stack(out)


def test_no_ablation_is_exactly_the_model_and_all_patched_is_the_corrupted_site(lm, sae_dir):
    data = char_task(lm)
    patcher = FeaturePatcher(lm, sae_dir)
    assert patcher.n_nodes == 64 + 1 and list(patcher.nodes["kind"].unique()) == ["feature", "sae_error"]
    prepared = patcher.prepare(data)
    plain = patcher.per_prompt([(b, {}) for b, _ in prepared])  # no hook at all
    untouched = patcher.per_prompt(prepared)
    ones = patcher.per_prompt(prepared, torch.ones(patcher.n_nodes))
    assert torch.equal(untouched, plain) and torch.equal(ones, plain)  # bit-exact, SAE spliced in
    assert torch.allclose(plain, site_metric(lm, data), atol=1e-5)
    # every feature and the error patched = the site's activation on the corrupted prompt (x + Δrecon + Δerror)
    corrupt = {}
    for i, p in enumerate(data.pairs):
        grab = lm.model.model.layers[0].register_forward_hook(lambda m, a, o, i=i: corrupt.__setitem__(i, o[0]
                                                              if isinstance(o, tuple) else o))
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([p.corrupt]))
        grab.remove()
    want = site_metric(lm, data, lambda i, h: corrupt[i])
    assert torch.allclose(patcher.per_prompt(prepared, torch.zeros(patcher.n_nodes)), want, atol=1e-4)


def test_zero_ablating_features_subtracts_their_decoder_rows(lm, sae_dir):
    """Zero-ablating features {i} moves the site by −Σ f_i · W_dec[i], computed here from the SAE's weights."""
    data = char_task(lm)
    patcher = FeaturePatcher(lm, sae_dir, "zero")
    sae = patcher.sae
    prepared = patcher.prepare(data)
    f = sae.encode(torch.cat([h[0] for h in _site_acts(lm, data)]))
    chosen = np.argsort(-f.abs().sum(0).detach().numpy())[:3].tolist()  # the three most active features
    keep = 1 - patcher.mask_from(parse_components(",".join(f"L0F{i}" for i in chosen)))
    w = sae.W_dec.detach()

    def edit(i, h):
        acts = sae.encode(h[0])[:, chosen]
        return h - (acts @ w[chosen])[None]
    with torch.no_grad():
        assert torch.allclose(patcher.per_prompt(prepared, keep), site_metric(lm, data, edit), atol=1e-4)


def _site_acts(lm, data):
    acts = []
    handle = lm.model.model.layers[0].register_forward_hook(lambda m, a, o: acts.append(o[0] if isinstance(o, tuple)
                                                                                          else o))
    with torch.no_grad():
        for p in data.pairs:
            lm.model(input_ids=torch.tensor([p.clean]))
    handle.remove()
    return acts


def test_feature_attribution_agrees_with_exact_patching_in_sign_and_rank(lm, sae_dir):
    data = char_task(lm, n=6)
    patcher = FeaturePatcher(lm, sae_dir)
    prepared = patcher.prepare(data)
    truth = attribution.exact(patcher, prepared).numpy()
    moved = patcher.moved(prepared).numpy()  # the rest are equal on clean and corrupted prompts: exactly 0, unrun
    assert 10 <= moved.sum() < patcher.n_nodes and np.all(truth[~moved] == 0) and np.all(truth[moved] != 0)
    base = patcher.metric(prepared)
    for i in np.flatnonzero(~moved)[:3]:  # a real forward confirms the skipped ones
        keep = torch.ones(patcher.n_nodes)
        keep[i] = 0
        assert patcher.metric(prepared, keep) == base
    for method in ("eap", "eap_ig"):
        est = attribution.effects(patcher, prepared, method, steps=8).numpy()
        assert np.all(est[~moved] == 0), method  # zero difference, zero attribution
        big = np.abs(truth) > 0.1 * np.abs(truth).max()
        assert spearmanr(est[moved], truth[moved]).statistic > 0.8, method
        assert (np.sign(est[big]) == np.sign(truth[big])).all(), method


def test_feature_discovery_scores_and_circuit_files(lm, sae_dir, tmp_path, monkeypatch):
    from sparsescope.circuits import tasks

    monkeypatch.setattr(tasks.Performance, "check", lambda self: None)
    cfg = DiscoverConfig(methods=("eap", "eap_ig", "mask"), level="features", sae=str(sae_dir), n=4, random_seeds=2,
                         steps=2, validate=6, mask=MaskConfig(steps=2), sizes=(10, 50, 100))
    t = discover(lm, "induction", cfg)
    full = t["faithfulness"][t["faithfulness"]["size_frac"] == 1.0]
    assert (full["faithfulness"] == 1.0).all() and set(full["method"]) == {"eap", "eap_ig", "mask", "random"}
    assert set(t["effects"]["kind"]) == {"feature", "sae_error"} and (t["scores"]["n_nodes"] == 65).all()
    assert set(t["validation"]["method"]) == {"eap", "eap_ig"}
    s = t["scores"].set_index("method")
    assert s["all_features_without_error"].nunique() == 1 and s["error_in_circuit"].dtype == bool
    assert (s.loc[~s["error_in_circuit"], "sufficiency_without_error"]
            == s.loc[~s["error_in_circuit"], "sufficiency"]).all()  # an error-free circuit is unchanged by it
    circuit = t["circuit"][t["circuit"]["method"] == "eap_ig"]
    path = tmp_path / "c.json"
    patcher = FeaturePatcher(lm, sae_dir)
    save_circuit(path, lm, circuit, "features", patcher)
    nodes, level = load_circuit(path, lm)
    assert level == "features" and nodes.attrs["sae"]["d_sae"] == 64
    got = score_circuit(lm, "induction", nodes, level, DiscoverConfig(n=4))  # the SAE named in the file
    assert got["n_components"] == len(circuit) and np.isfinite(got["faithfulness"])
    row = ablate(lm, "induction", nodes, DiscoverConfig(n=4, sae=str(sae_dir)))
    assert row["n_ablated"] == len(circuit)


def _edited(sae_dir, tmp_path, **changes):
    other = tmp_path / "sae"
    shutil.copytree(sae_dir, other)
    manifest = json.loads((other / "sparsescope.json").read_text())
    (other / "sparsescope.json").write_text(json.dumps(manifest | changes))
    return other


def test_an_sae_that_does_not_fit_is_one_user_error(lm, sae_dir, tmp_path):
    cases = [({"site": "blocks.7.hook_resid_post"}, "layer"),  # a site the 2-layer model lacks
             ({"site": "blocks.0.mlp.hook_post"}, "wide"),  # 64-wide site, SAE reads 32
             ({"model_revision": "0000"}, "was trained on")]
    for i, (change, message) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        with pytest.raises(UserError, match=message):
            FeaturePatcher(lm, _edited(sae_dir, folder, **change))
    with pytest.raises(UserError, match="--level features and --sae"):
        make_patcher(lm, "features")
    with pytest.raises(UserError, match="not a features-level node"):
        FeaturePatcher(lm, sae_dir).mask_from(parse_components("L1F3"))  # the SAE is at layer 0
    with pytest.raises(UserError, match="mix SAE features"):
        ablate(lm, "induction", parse_components("L0F3,L0H1"), DiscoverConfig(n=4, sae=str(sae_dir)))


def test_cli_wrong_sae_is_one_line(model_dir, sae_dir, tmp_path):
    from sparsescope.cli import app

    res = CliRunner().invoke(app, ["circuits", "ablate", "--model", str(model_dir), "--task", "induction",
                                   "--components", "L0F3", "--sae", str(sae_dir), "--n", "4"])
    assert res.exit_code == 2 and "was trained on" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_smollm2_feature_splice_is_exact_on_a_gqa_model(tmp_path):
    """On the embedded SmolLM2 (grouped-query attention), an SAE at a mid-layer residual site: unpatched = the
    model bit for bit; every feature and the error patched = the corrupted prompt's residual stream at that site."""
    from sparsescope.circuits.tasks import make_task
    from sparsescope.models import load_model

    lm = load_model("smollm2-135m")
    site = "blocks.12.hook_resid_post"
    cfg = SAETrainConfig(site=site, d_sae=256, k=8, train_tokens=256, batch_size=128, seed=0)
    data = iter([torch.randn(128, 576) for _ in range(8)])
    train(data, 576, cfg, tmp_path / "sae", {"model": lm.name, "model_revision": lm.revision})
    patcher = FeaturePatcher(lm, tmp_path / "sae")
    prepared = patcher.prepare(make_task("ioi", lm.tokenizer, 4, "test", 0))
    plain = patcher.per_prompt([(b, {}) for b, _ in prepared])
    assert torch.equal(patcher.per_prompt(prepared, torch.ones(patcher.n_nodes)), plain)
    corrupt = torch.cat([patcher.per_prompt([(b, {})], corrupt=True) for b, _ in prepared])
    assert torch.allclose(patcher.per_prompt(prepared, torch.zeros(patcher.n_nodes)), corrupt, atol=1e-3)


def test_basis_nodes_are_the_sites_own_units(lm):
    """``basis:<site>``: node i is coordinate i of the site (error exactly 0); zero-ablating it zeroes that
    coordinate of the block's output, as a raw hook does."""
    data = char_task(lm)
    patcher = make_patcher(lm, "features", "zero", sae=f"basis:{SITE}")
    assert patcher.n_nodes == 32 + 1
    prepared = patcher.prepare(data)
    assert torch.equal(patcher.per_prompt(prepared, torch.ones(patcher.n_nodes)),
                       patcher.per_prompt([(b, {}) for b, _ in prepared]))

    def zero(i, h):
        h = h.clone()
        h[..., [3, 17]] = 0
        return h
    keep = 1 - patcher.mask_from(parse_components("L0F3,L0F17"))
    assert torch.allclose(patcher.per_prompt(prepared, keep), site_metric(lm, data, zero), atol=1e-5)
    with pytest.raises(UserError, match="layer"):
        make_patcher(lm, "features", sae="basis:blocks.9.hook_resid_post")

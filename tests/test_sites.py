"""Every site's captured tensor equals a manual forward / output_hidden_states on tiny random models."""

import pytest
import torch
import torch.nn.functional as F

from sparsescope.errors import UserError
from sparsescope.models.sites import ACTIVATION_SITES, parse_site, sitemap_for
from tiny import tiny_model


def capture(lm, ids):
    """All sites of all layers via the site map's hooks."""
    got, handles = {}, []
    for layer in range(lm.n_layers):
        for site in lm.sites.activation_sites:
            module, io, extract = lm.sites.hook(layer, site)
            key = (layer, site)
            if io == "output":
                handles.append(module.register_forward_hook(lambda m, a, o, k=key, f=extract: got.__setitem__(k, f(o))))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, kw, k=key: got.__setitem__(k, a[0] if a else kw["hidden_states"]), with_kwargs=True))
    try:
        out = lm.model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return got, out


IDS = torch.tensor([[5, 17, 42, 9, 77, 3, 60, 21]])


@torch.no_grad()
def test_llama_sites_equal_manual_forward():
    lm = tiny_model("llama", dtype=torch.float64)
    got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)] for s in ACTIVATION_SITES}
        assert torch.equal(g["hook_resid_pre"], out.hidden_states[layer])
        assert torch.allclose(g["ln1.hook_normalized"], blk.input_layernorm(g["hook_resid_pre"]))
        assert torch.allclose(g["hook_attn_out"], blk.self_attn.o_proj(g["attn.hook_z"]))
        assert torch.allclose(g["attn.hook_pattern"], out.attentions[layer])
        mid = g["hook_resid_pre"] + g["hook_attn_out"]
        assert torch.allclose(g["ln2.hook_normalized"], blk.post_attention_layernorm(mid))
        x = g["ln2.hook_normalized"]
        assert torch.allclose(g["mlp.hook_pre"], blk.mlp.gate_proj(x))
        assert torch.allclose(g["mlp.hook_post"], F.silu(blk.mlp.gate_proj(x)) * blk.mlp.up_proj(x))
        assert torch.allclose(g["hook_mlp_out"], blk.mlp.down_proj(g["mlp.hook_post"]))
        assert torch.allclose(g["hook_resid_post"], mid + g["hook_mlp_out"])
        if layer + 1 < lm.n_layers:  # HF's last hidden state has the final norm applied
            assert torch.equal(g["hook_resid_post"], out.hidden_states[layer + 1])


@torch.no_grad()
def test_gpt2_sites_equal_manual_forward():
    lm = tiny_model("gpt2", dtype=torch.float64)
    got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)] for s in ACTIVATION_SITES}
        assert torch.equal(g["hook_resid_pre"], out.hidden_states[layer])
        assert torch.allclose(g["ln1.hook_normalized"], blk.ln_1(g["hook_resid_pre"]))
        assert torch.allclose(g["attn.hook_pattern"], out.attentions[layer])
        assert torch.allclose(g["hook_attn_out"], blk.attn.c_proj(g["attn.hook_z"]))
        mid = g["hook_resid_pre"] + g["hook_attn_out"]
        assert torch.allclose(g["ln2.hook_normalized"], blk.ln_2(mid))
        assert torch.allclose(g["mlp.hook_pre"], blk.mlp.c_fc(g["ln2.hook_normalized"]))
        assert torch.allclose(g["mlp.hook_post"], blk.mlp.act(g["mlp.hook_pre"]))
        assert torch.allclose(g["hook_resid_post"], mid + g["hook_mlp_out"])
        if layer + 1 < lm.n_layers:
            assert torch.equal(g["hook_resid_post"], out.hidden_states[layer + 1])


@torch.no_grad()
def test_bert_sites_equal_manual_forward():
    lm = tiny_model("bert", dtype=torch.float64)
    got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)] for s in ACTIVATION_SITES}
        assert torch.equal(g["hook_resid_pre"], out.hidden_states[layer])
        assert torch.equal(g["ln1.hook_normalized"], g["hook_resid_pre"])  # post-LN: q/k/v read the residual
        assert torch.allclose(g["attn.hook_pattern"], out.attentions[layer])
        assert torch.allclose(g["ln2.hook_normalized"],
                              blk.attention.output.LayerNorm(g["hook_attn_out"] + g["hook_resid_pre"]))
        assert torch.allclose(g["mlp.hook_post"], blk.intermediate.intermediate_act_fn(g["mlp.hook_pre"]))
        assert torch.allclose(g["hook_resid_post"], blk.output.LayerNorm(g["hook_mlp_out"] + g["ln2.hook_normalized"]))
        assert torch.equal(g["hook_resid_post"], out.hidden_states[layer + 1])


@pytest.mark.parametrize("arch", ["qwen2", "gpt_neox", "opt"])
def test_other_archs_resid_and_mlp_identities(arch):
    lm = tiny_model(arch, dtype=torch.float64)
    with torch.no_grad():
        got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        assert torch.equal(got[(layer, "hook_resid_pre")], out.hidden_states[layer])
        assert torch.allclose(got[(layer, "attn.hook_pattern")], out.attentions[layer])
        assert got[(layer, "mlp.hook_post")].shape[-1] == 64


def test_fused_qkv_weight_slices():
    lm = tiny_model("gpt2")
    full = lm.sites.linear(0, "attn.W_Q").weight.t()
    parts = [lm.sites.weight(0, s) for s in ("attn.W_Q", "attn.W_K", "attn.W_V")]
    assert torch.equal(torch.cat(parts), full)
    neox = tiny_model("gpt_neox")
    w = neox.sites.linear(0, "attn.W_Q").weight  # [heads·3·head_dim, in]
    q = neox.sites.weight(0, "attn.W_Q")
    assert torch.equal(q[:8], w[:8]) and torch.equal(q[8:16], w[24:32])  # head 0 then head 1 (head_dim 8)


def test_errors_name_the_fix():
    lm = tiny_model("llama")
    with pytest.raises(UserError, match="layers 0..1"):
        lm.sites.hook(5, "mlp.hook_post")
    with pytest.raises(UserError, match="choose from"):
        lm.sites.hook(0, "mlp.hook_nope")
    with pytest.raises(UserError, match="blocks"):
        parse_site("mlp.hook_post")
    model = torch.nn.Linear(2, 2)
    model.config = type("C", (), {"model_type": "mamba"})()
    with pytest.raises(UserError, match="supported: .*llama.*custom"):
        sitemap_for(model)

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


def attention_z(pattern, v, n_heads, n_kv):
    """[T, H·d]: Σ_k pattern[h, t, k] · v[k, kv(h)] per head, heads concatenated; kv(h) = h // (H / H_kv)."""
    T, d = v.shape[0], v.shape[1] // n_kv
    v = v.view(T, n_kv, d).repeat_interleave(n_heads // n_kv, dim=1)  # [T, H, d]
    return torch.einsum("htk,khd->thd", pattern, v).reshape(T, n_heads * d)


@torch.no_grad()
def test_qwen2_sites_equal_manual_forward():
    lm = tiny_model("qwen2", dtype=torch.float64)
    got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)][0] if got[(layer, s)].dim() == 3 else got[(layer, s)] for s in ACTIVATION_SITES}
        assert torch.equal(g["hook_resid_pre"], out.hidden_states[layer][0])
        assert torch.allclose(g["ln1.hook_normalized"], blk.input_layernorm(g["hook_resid_pre"]))
        assert torch.allclose(got[(layer, "attn.hook_pattern")], out.attentions[layer])
        v = blk.self_attn.v_proj(g["ln1.hook_normalized"])  # qwen2's v_proj has a bias
        z = attention_z(out.attentions[layer][0], v, 4, 2)
        assert torch.allclose(g["attn.hook_z"], z)
        assert torch.allclose(g["hook_attn_out"], blk.self_attn.o_proj(z))
        mid = g["hook_resid_pre"] + g["hook_attn_out"]
        x = blk.post_attention_layernorm(mid)
        assert torch.allclose(g["ln2.hook_normalized"], x)
        assert torch.allclose(g["mlp.hook_pre"], blk.mlp.gate_proj(x))
        assert torch.allclose(g["mlp.hook_post"], F.silu(blk.mlp.gate_proj(x)) * blk.mlp.up_proj(x))
        assert torch.allclose(g["hook_resid_post"], mid + blk.mlp.down_proj(g["mlp.hook_post"]))
    assert lm.causal


@torch.no_grad()
def test_gpt_neox_sites_equal_manual_forward():
    lm = tiny_model("gpt_neox", dtype=torch.float64)
    got, out = capture(lm, IDS)
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)][0] for s in ACTIVATION_SITES if s != "attn.hook_pattern"}
        r = g["hook_resid_pre"]
        assert torch.equal(r, out.hidden_states[layer][0])
        assert torch.allclose(g["ln1.hook_normalized"], blk.input_layernorm(r))
        assert torch.allclose(got[(layer, "attn.hook_pattern")], out.attentions[layer])
        qkv = blk.attention.query_key_value(g["ln1.hook_normalized"]).view(len(r), 4, 3, 8)  # per head: q, k, v
        z = attention_z(out.attentions[layer][0], qkv[:, :, 2].reshape(len(r), 32), 4, 4)
        assert torch.allclose(g["attn.hook_z"], z)
        assert torch.allclose(g["hook_attn_out"], blk.attention.dense(z))
        # parallel residual (use_parallel_residual): the MLP reads LN2 of the block input, not of resid + attn
        assert blk.use_parallel_residual
        x = blk.post_attention_layernorm(r)
        assert torch.allclose(g["ln2.hook_normalized"], x)
        assert torch.allclose(g["mlp.hook_pre"], blk.mlp.dense_h_to_4h(x))
        assert torch.allclose(g["mlp.hook_post"], blk.mlp.act(g["mlp.hook_pre"]))
        assert torch.allclose(g["hook_mlp_out"], blk.mlp.dense_4h_to_h(g["mlp.hook_post"]))
        assert torch.allclose(g["hook_resid_post"], r + g["hook_attn_out"] + g["hook_mlp_out"])
    assert lm.causal  # NeoX's head is `embed_out`, not `lm_head`: causality comes from the config


@torch.no_grad()
def test_opt_sites_equal_manual_forward():
    lm = tiny_model("opt", dtype=torch.float64)
    got, out = capture(lm, IDS)
    T = IDS.shape[1]
    for layer in range(lm.n_layers):
        blk = lm.sites.block(layer)
        g = {s: got[(layer, s)].reshape(T, -1) for s in ACTIVATION_SITES if s != "attn.hook_pattern"}  # OPT flattens
        r = g["hook_resid_pre"]
        assert torch.equal(r, out.hidden_states[layer][0])
        assert blk.do_layer_norm_before  # pre-LN (OPT-125m style)
        assert torch.allclose(g["ln1.hook_normalized"], blk.self_attn_layer_norm(r))
        assert torch.allclose(got[(layer, "attn.hook_pattern")], out.attentions[layer])
        z = attention_z(out.attentions[layer][0], blk.self_attn.v_proj(g["ln1.hook_normalized"]), 4, 4)
        assert torch.allclose(g["attn.hook_z"], z)
        assert torch.allclose(g["hook_attn_out"], blk.self_attn.out_proj(z))
        mid = r + g["hook_attn_out"]
        x = blk.final_layer_norm(mid)
        assert torch.allclose(g["ln2.hook_normalized"], x)
        assert torch.allclose(g["mlp.hook_pre"], blk.fc1(x))
        assert torch.allclose(g["mlp.hook_post"], torch.relu(blk.fc1(x)))
        assert torch.allclose(g["hook_mlp_out"], blk.fc2(g["mlp.hook_post"]))
        assert torch.allclose(g["hook_resid_post"], mid + g["hook_mlp_out"])
    assert lm.causal


def test_causal_flag_comes_from_the_config():
    import transformers as T

    from sparsescope.models import load_model
    from tiny import char_tokenizer

    assert {a: tiny_model(a).causal for a in ("llama", "qwen2", "gpt2", "gpt_neox", "opt", "bert")} == {
        "llama": True, "qwen2": True, "gpt2": True, "gpt_neox": True, "opt": True, "bert": False}
    cfg = T.BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, is_decoder=True)
    assert load_model((T.BertModel(cfg), char_tokenizer())).causal  # a BERT configured as a decoder


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

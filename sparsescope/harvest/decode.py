"""A lean batch-1 decode loop (static KV cache, no per-token framework overhead) for Llama-like models.

Hugging Face ``generate`` spends ≈ 100 ms per SmolLM2 token on this CPU where streaming the weights takes ≈ 25 ms,
so a speed-up measured inside it is mostly an artefact of its overhead. ``LeanDecoder`` runs one token through the
model's own modules — norms, projections (plain, or wrapped by an ``intervene`` plan such as ``sparse``), MLP and
LM head — with preallocated K/V tensors, the model's rotary table computed once, and grouped-query attention
written out as two small matmuls. Dense and planned runs use this same loop, so their ratio is the kernels' doing.
``head`` swaps the (tied) LM head for a packed fp32/int8 copy during a with-block; the original module comes back.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from sparsescope.errors import UserError
from sparsescope.eval import Evaluator
from sparsescope.intervene import Plan, Wrapped, apply
from sparsescope.kernels import sparse as sp
from sparsescope.kernels.linear import SparseLinear
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import linear_weight

HEAD_FORMATS = ("torch", "fp32", "int8")  # torch: the model's own lm_head (F.linear)


class PackedHead(nn.Module):
    """An LM head computed by our dense GEMV from a packed copy (the tied embedding itself is not modified)."""

    def __init__(self, original: nn.Module, fmt: str):
        super().__init__()
        self.packed = sp.pack(original.weight, getattr(original, "bias", None), fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = x.numel() // x.shape[-1] <= 16
        return sp.linear(self.packed, x, backend="auto" if small else "torch")


@contextlib.contextmanager
def head(lm: LoadedModel, fmt: str = "torch"):
    """Within the block, ``lm.model``'s output embedding is computed as ``fmt`` (torch = unchanged)."""
    if fmt not in HEAD_FORMATS:
        raise UserError(f"unknown LM head format {fmt!r}; choose one of {', '.join(HEAD_FORMATS)}")
    if fmt == "torch":
        yield
        return
    original = lm.model.get_output_embeddings()
    if original is None:
        raise UserError(f"{lm.name} has no output embedding (LM head) to pack; use head 'torch'")
    lm.model.set_output_embeddings(PackedHead(original, fmt))
    try:
        yield
    finally:
        lm.model.set_output_embeddings(original)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


SLOTS = ("q", "k", "v", "o", "gate", "up", "down", "rest")  # the fused loop's profile slots per layer
LOOPS = ("fused", "modules")


class LeanDecoder:
    """Greedy batch-1 decoding of a Llama-like model with a static KV cache of ``max_len`` positions.

    Two loops over the same weights and the same plan. ``fused``: one C++ call per token (``kernels.sparse.native
    ().Decoder``) runs every norm, projection, rotary, attention and residual with buffers allocated once; each
    linear is our GEMV on a packed weight — the ``sparse`` lever's own (its threshold and format) or, for a plain
    linear, an fp32 packing of it (our dense GEMV) — and the LM head is a ``head(lm, "fp32"|"int8")`` packing or
    torch's. ``modules``: a Python loop through the model's own modules (any lever works there). ``fused=None``
    takes the fused loop when it can (kernel built, fp32 SiLU/RMSNorm model, every linear plain or a ``sparse``
    lever without spikes) and says why not in ``why_not_fused``.
    """

    def __init__(self, lm: LoadedModel, max_len: int = 512, fused: bool | None = None):
        inner = getattr(lm.model, "model", None)
        layers = getattr(inner, "layers", None)
        if lm.kind != "hf" or layers is None or not hasattr(layers[0], "self_attn") or \
                not hasattr(layers[0].self_attn, "q_proj") or not hasattr(inner, "rotary_emb"):
            raise UserError(f"the lean decode loop supports Llama-like models (Llama, Qwen2, SmolLM2); {lm.name} "
                            f"({lm.arch}) is not one — use HF generate for it")
        cfg = lm.model.config
        self.lm, self.inner, self.layers = lm, inner, layers
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.max_len = min(max_len, getattr(cfg, "max_position_embeddings", max_len))
        p = next(lm.model.parameters())
        with torch.inference_mode():
            pos = torch.arange(self.max_len)[None]
            cos, sin = inner.rotary_emb(torch.zeros(1, dtype=p.dtype), pos)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # [max_len, head_dim]
        shape = (len(layers), self.n_kv, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=p.dtype)
        self.v = torch.zeros(shape, dtype=p.dtype)
        self.scale = self.head_dim ** -0.5
        self.profile: str | None = None  # fused loop: "wall" or "cpu" adds up seconds per slot (take_profile)
        self.why_not_fused = "" if fused is not False else "the modules loop was asked for"
        self.native = self._build_fused() if fused is not False else None
        if fused and self.native is None:
            raise UserError(f"the fused decode loop cannot run {lm.name} here: {self.why_not_fused}")

    @property
    def fused(self) -> bool:
        return self.native is not None

    def _linear(self, module: nn.Module):
        """``(packed, threshold)`` for the fused loop, or a reason (str) why this linear cannot run there."""
        if isinstance(module, nn.Linear):
            return sp.pack(module.weight, module.bias, "fp32"), None
        lever = module.levers[0] if isinstance(module, Wrapped) and len(module.levers) == 1 else None
        if not isinstance(lever, SparseLinear) or lever.spike_k is not None:
            return "a linear carries a lever other than `sparse` with TEAL thresholds (spike or weight levers)"
        if lever.packed is None:
            lever.packed = sp.pack(linear_weight(module.original), getattr(module.original, "bias", None),
                                   lever.weights)
        return lever.packed, lever.threshold

    def _build_fused(self):
        """The C++ decoder over this model as it stands (plan applied), or None with ``why_not_fused`` set."""
        mod = sp.native()
        cfg = self.lm.model.config
        norms = [m for layer in self.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)]
        norms.append(self.inner.norm)
        checks = [(mod is None, "the C++ kernel is not built"),
                  (self.k.dtype != torch.float32, f"the model is {self.k.dtype}, the fused loop runs float32"),
                  (next(self.lm.model.parameters()).device.type != "cpu", "the model is not on the CPU, where the "
                   "C++ loop runs"),
                  (getattr(cfg, "hidden_act", None) != "silu", f"activation {getattr(cfg, 'hidden_act', None)}"),
                  (not all(hasattr(m, "variance_epsilon") for m in norms), "norms are not RMSNorm"),
                  (self.head_dim % 2, "odd head_dim")]
        for bad, why in checks:
            if bad:
                self.why_not_fused = why
                return None
        lins = []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            for module in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                got = self._linear(module)
                if isinstance(got, str):
                    self.why_not_fused = got
                    return None
                lins.append(_native_linear(mod, *got))
        head_module = self.lm.model.get_output_embeddings()
        self.head_module = head_module
        has_head = isinstance(head_module, PackedHead)
        if has_head:
            lins.append(_native_linear(mod, head_module.packed, None))
            self.logits = torch.empty(head_module.packed.out_features)
        else:
            self.logits = torch.empty(0)
        weights = [n.weight.detach().float().contiguous() for n in norms]
        self._keep = weights
        return mod.Decoder(lins, weights, self.k, self.v, self.n_heads, self.n_kv, self.head_dim,
                           float(norms[0].variance_epsilon), has_head)

    def take_profile(self) -> dict[str, float]:
        """Seconds per ``(layer, slot)`` name (``"3.down"``, ``"3.rest"``, ``"norm"``, ``"head"``) since the last
        call, as the fused loop's ``profile`` clock counted them; zeroes the counters."""
        if self.native is None:
            raise UserError(f"profiles come from the fused loop, which is not running here ({self.why_not_fused})")
        t = self.native.take_profile().tolist()
        names = [f"{i}.{s}" for i in range(len(self.layers)) for s in SLOTS] + ["norm", "head"]
        return dict(zip(names, t))

    @torch.inference_mode()
    def step(self, token: int, pos: int) -> torch.Tensor:
        """Logits [vocab] after feeding ``token`` at position ``pos`` (positions 0..pos-1 already fed)."""
        if pos >= self.max_len:
            raise UserError(f"position {pos} exceeds the decoder's max_len {self.max_len}; build it with a larger one")
        if self.native is not None:
            h = self.inner.embed_tokens.weight[token].float().clone()
            self.native.step(h, pos, self.cos[pos], self.sin[pos], self.logits, self.profile is not None,
                             self.profile == "cpu")
            return self.logits.clone() if self.logits.numel() else self.head_module(h[None])[0]
        h = self.inner.embed_tokens.weight[token][None]
        cos, sin, g = self.cos[pos], self.sin[pos], self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            q = att.q_proj(x).view(self.n_heads, self.head_dim)
            k = att.k_proj(x).view(self.n_kv, self.head_dim)
            self.v[i, :, pos] = att.v_proj(x).view(self.n_kv, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            self.k[i, :, pos] = k * cos + _rotate_half(k) * sin
            scores = q.view(self.n_kv, g, self.head_dim) @ self.k[i, :, : pos + 1].transpose(1, 2) * self.scale
            ctx = torch.softmax(scores.float(), -1).to(q.dtype) @ self.v[i, :, : pos + 1]
            h = h + att.o_proj(ctx.reshape(1, -1))
            x = layer.post_attention_layernorm(h)
            mlp = layer.mlp
            h = h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        return self.lm.model.get_output_embeddings()(self.inner.norm(h))[0]

    def prefill(self, prompt: list[int]) -> None:
        """Feed all but the last prompt token (positions 0..len-2), one step each."""
        if not prompt or len(prompt) > self.max_len:
            raise UserError(f"a prompt of {len(prompt)} tokens must be non-empty and fit max_len {self.max_len}")
        for pos, t in enumerate(prompt[:-1]):
            self.step(t, pos)

    def generate(self, prompt: list[int], n_new: int, clock=time.perf_counter) -> tuple[list[int], float]:
        """Greedy continuation of ``prompt`` by ``n_new`` tokens and the seconds spent per generated token
        (``clock=time.process_time``: the CPU time this process got, for one thread on a shared machine)."""
        if not prompt or len(prompt) + n_new > self.max_len:
            raise UserError(f"prompt of {len(prompt)} + {n_new} new tokens must be non-empty and fit max_len "
                            f"{self.max_len}")
        self.prefill(prompt)
        tokens, pos = list(prompt), len(prompt) - 1
        start = clock()
        for _ in range(n_new):
            tokens.append(int(self.step(tokens[-1], pos).argmax()))
            pos += 1
        return tokens[len(prompt):], (clock() - start) / n_new


def _native_linear(mod, packed: sp.Packed, threshold: float | None):
    return mod.Linear(packed.wt, packed.scale, packed.bias, threshold is not None,
                      0.0 if threshold is None else float(threshold))


def hf_generate(lm: LoadedModel, prompt: list[int], n_new: int, clock=time.perf_counter) -> tuple[list[int], float]:
    """Hugging Face greedy ``generate`` for reference: (new tokens, seconds per new token, prefill included)."""
    ids = torch.tensor([prompt])
    start = clock()
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                min_new_tokens=n_new, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, len(prompt):].tolist(), (clock() - start) / n_new


def median_ms(runs: list[float]) -> float:
    return 1e3 * statistics.median(runs)


@dataclass
class DecodeConfig:
    """One configuration ``measure`` times: a plan, the LM head's format and the loop that runs them."""

    plan: Plan
    head: str = "torch"  # LM head: torch (the model's own F.linear), fp32 or int8 (a packed copy, our GEMV)
    loop: str = "fused"  # fused: one C++ call per token where the plan allows (else modules); modules: Python loop


def dense_configs() -> dict[str, DecodeConfig]:
    """The two dense paths: torch ``F.linear`` through the model's modules (the lean Python loop), and our dense
    GEMV on every linear and the LM head in the fused loop. The faster is the baseline of every speed-up."""
    return {"dense torch": DecodeConfig(Plan([]), "torch", "modules"), "dense ours": DecodeConfig(Plan([]), "fp32")}


def measure(lm: LoadedModel, configs: dict[str, DecodeConfig], prompt: list[int], n_new: int = 32,
            repeats: int = 3, evaluator: Evaluator | None = None, calibration: dict | None = None,
            hf_reference: bool = True, progress=None, clock=time.perf_counter,
            threads: Sequence[int] = ()) -> pd.DataFrame:
    """Decode speed (lean loop) and quality of each configuration, side by side, per thread count.

    For each of ``threads`` (default: torch's current count), every repeat runs every configuration once in turn
    (apply → decode ``n_new`` tokens → restore), so a busy machine slows all of them alike; the table holds
    medians. ``speedup`` is against the fastest configuration whose name starts with ``dense`` at the same thread
    count; ``loop`` says which loop ran. Quality (``delta_ppl``, relative ``rel_delta_ppl``, ``kl``) comes from
    ``evaluator`` with the same plan applied. ``hf_reference`` adds HF ``generate`` on the unmodified model.
    """
    tick = progress or (lambda label: None)
    quality = {}
    for name, c in configs.items():
        if evaluator is not None:
            with apply(lm, c.plan, calibration), head(lm, c.head):
                q = evaluator.evaluate()
            quality[name] = q | {"rel_delta_ppl": q["delta_ppl"] / evaluator.dense_ppl}
            tick(f"{name}: Δppl {quality[name]['rel_delta_ppl']:+.2%}")
    before = torch.get_num_threads()
    frames = []
    try:
        for n_threads in threads or [before]:
            torch.set_num_threads(n_threads)
            frames.append(_timed(lm, configs, prompt, n_new, repeats, hf_reference, tick, clock, quality, evaluator,
                                 calibration)
                          .assign(threads=n_threads))
    finally:
        torch.set_num_threads(before)
    return pd.concat(frames, ignore_index=True)


def _timed(lm, configs, prompt, n_new, repeats, hf_reference, tick, clock, quality, evaluator, calibration
           ) -> pd.DataFrame:
    """One thread count of :func:`measure`: interleaved repeats, medians, speed-up vs the faster dense."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    texts, loops = {}, {}
    if hf_reference:
        times["HF generate (dense)"] = []
    for _ in range(repeats):
        for name, c in configs.items():
            with apply(lm, c.plan, calibration), head(lm, c.head):
                decoder = LeanDecoder(lm, len(prompt) + n_new, fused=False if c.loop == "modules" else None)
                tokens, sec = decoder.generate(prompt, n_new, clock)
            times[name].append(sec)
            texts.setdefault(name, lm.tokenizer.decode(tokens))
            loops[name] = "fused" if decoder.fused else f"modules ({decoder.why_not_fused})"
            tick(f"{name}: {1e3 * sec:.1f} ms/token ({torch.get_num_threads()} threads)")
        if hf_reference:
            tokens, sec = hf_generate(lm, prompt, n_new, clock)
            times["HF generate (dense)"].append(sec)
            texts.setdefault("HF generate (dense)", lm.tokenizer.decode(tokens))
            loops["HF generate (dense)"] = "HF generate"
    rows = []
    for name, sec in times.items():
        ms = median_ms(sec)
        q = quality.get(name, {"ppl": evaluator.dense_ppl, "delta_ppl": 0.0, "rel_delta_ppl": 0.0, "kl": 0.0}
                        if evaluator is not None and name.startswith("HF") else {})
        rows.append({"config": name, "loop": loops[name], "ms_per_token": ms, "tokens_per_s": 1e3 / ms,
                     "ms_runs": json.dumps([round(1e3 * s, 2) for s in sec]), "n_new": n_new, "repeats": repeats,
                     "sample": texts[name][:80]} | q)
    df = pd.DataFrame(rows)
    dense = df.loc[df["config"].str.startswith("dense"), "ms_per_token"]
    df["speedup"] = (dense.min() if len(dense) else float("nan")) / df["ms_per_token"]
    return df


def profile(lm: LoadedModel, configs: dict[str, DecodeConfig], prompt: list[int], n_new: int = 16,
            calibration: dict | None = None, clock: str = "wall") -> pd.DataFrame:
    """Where a token's time goes in the fused loop: ms per token per component (the seven projections summed over
    layers, ``rest`` = norms, rotary, attention and residuals, ``head``), median over ``n_new`` tokens, one row per
    (configuration, component). Configurations the fused loop cannot run are left out."""
    rows = []
    for name, c in configs.items():
        with apply(lm, c.plan, calibration), head(lm, c.head):
            decoder = LeanDecoder(lm, len(prompt) + n_new)
            if c.loop == "modules" or not decoder.fused:
                continue
            decoder.profile = clock
            decoder.prefill(prompt)
            decoder.take_profile()
            per_token: dict[str, list[float]] = {}
            token = prompt[-1]
            for pos in range(len(prompt) - 1, len(prompt) - 1 + n_new):
                token = int(decoder.step(token, pos).argmax())
                sums: dict[str, float] = {}
                for key, sec in decoder.take_profile().items():
                    part = key.split(".")[-1]
                    sums[part] = sums.get(part, 0.0) + sec
                for part, sec in sums.items():
                    per_token.setdefault(part, []).append(sec)
        rows += [{"config": name, "component": part, "ms_per_token": median_ms(v)} for part, v in per_token.items()]
    return pd.DataFrame(rows, columns=["config", "component", "ms_per_token"])

"""Site maps: TransformerLens site names (``blocks.{l}.mlp.hook_post`` ...) translated to module hooks per architecture.

One table per architecture says which module's input or output carries each activation site and which
linear holds each weight site; everything that hooks a model (recorder, interventions, weight statistics)
goes through :class:`SiteMap`, so a new architecture is one more table.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from sparsescope.errors import UserError

IO = Literal["input", "output"]

ACTIVATION_SITES: tuple[str, ...] = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
WEIGHT_SITES: tuple[str, ...] = (
    "attn.W_Q",
    "attn.W_K",
    "attn.W_V",
    "attn.W_O",
    "mlp.W_gate",
    "mlp.W_in",
    "mlp.W_out",
)
# Which activation site each linear reads: an input transform on the linear acts on this site.
LINEAR_INPUT_SITE: dict[str, str] = {
    "attn.W_Q": "ln1.hook_normalized",
    "attn.W_K": "ln1.hook_normalized",
    "attn.W_V": "ln1.hook_normalized",
    "attn.W_O": "attn.hook_z",
    "mlp.W_gate": "ln2.hook_normalized",
    "mlp.W_in": "ln2.hook_normalized",
    "mlp.W_out": "mlp.hook_post",
}

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def parse_site(name: str) -> tuple[int, str]:
    """Split ``blocks.3.mlp.hook_post`` into ``(3, "mlp.hook_post")``."""
    m = _SITE_RE.match(name)
    if not m:
        raise UserError(f"site name {name!r} is not of the form 'blocks.<layer>.<site>'; e.g. 'blocks.3.mlp.hook_post'")
    return int(m.group(1)), m.group(2)


def site_name(layer: int, site: str) -> str:
    """Inverse of :func:`parse_site`."""
    return f"blocks.{layer}.{site}"


def site_list(value: object, what: str = "sites") -> list[str] | None:
    """Sites as a user passes them: None (all), ``"mlp.hook_post,hook_resid_post"`` or a list of names."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(v, str) for v in items):
        raise UserError(f"{what} must be site names, got {value!r}; pass e.g. 'mlp.hook_post' or "
                        "['mlp.hook_post', 'blocks.3.hook_resid_post']")
    names = [v.strip() for v in items if v.strip()]
    if not names:
        raise UserError(f"no {what} given in {value!r}; pass e.g. 'mlp.hook_post' (or None for all)")
    return names


def layer_list(value: object, what: str = "layers") -> list[int] | None:
    """Layers as a user passes them: None (all), ``3``, ``"0,5,10-12"`` or a list of whole numbers."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, str):
        layers: list[int] = []
        for part in value.split(","):
            lo, dash, hi = part.strip().partition("-")
            if not (lo.isdigit() and (hi.isdigit() or not dash)):
                raise UserError(f"bad {what} {value!r}; write e.g. 0,5,10-12")
            if dash and int(hi) < int(lo):
                raise UserError(f"bad {what} {value!r}: the range {lo}-{hi} is empty; write the lower layer first, "
                                f"e.g. {hi}-{lo}")
            layers += list(range(int(lo), int(hi or lo) + 1))
        return layers
    items = list(value) if isinstance(value, Iterable) else None
    if items is None or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise UserError(f"{what} must be whole numbers, got {value!r}; pass e.g. [0, 5] or '0,5,10-12'")
    return [int(v) for v in items]


@dataclass(frozen=True)
class Hook:
    """Where a site lives: the module path (relative to the block, "" = the block) and which side of it."""

    module: str
    io: IO


@dataclass(frozen=True)
class Arch:
    """One architecture's table: block list path, activation-site hooks, weight-site linears.

    ``fused`` names weight sites that share one linear with others (GPT-2 ``c_attn``, NeoX ``query_key_value``):
    value is ``(index, count, interleave_heads)`` — which of ``count`` equal slices of the output rows it is.
    ``causal``: whether a position attends only to earlier ones (a config with ``is_decoder`` overrides False).
    """

    blocks: str
    hooks: dict[str, Hook]
    linears: dict[str, str]
    fused: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    causal: bool = True


def _llama_like(prefix: str = "model.layers") -> Arch:
    return Arch(
        blocks=prefix,
        hooks={
            "hook_resid_pre": Hook("", "input"),
            "ln1.hook_normalized": Hook("input_layernorm", "output"),
            "attn.hook_pattern": Hook("self_attn", "output"),
            "attn.hook_z": Hook("self_attn.o_proj", "input"),
            "hook_attn_out": Hook("self_attn.o_proj", "output"),
            "ln2.hook_normalized": Hook("post_attention_layernorm", "output"),
            "mlp.hook_pre": Hook("mlp.gate_proj", "output"),
            "mlp.hook_post": Hook("mlp.down_proj", "input"),
            "hook_mlp_out": Hook("mlp", "output"),
            "hook_resid_post": Hook("", "output"),
        },
        linears={
            "attn.W_Q": "self_attn.q_proj",
            "attn.W_K": "self_attn.k_proj",
            "attn.W_V": "self_attn.v_proj",
            "attn.W_O": "self_attn.o_proj",
            "mlp.W_gate": "mlp.gate_proj",
            "mlp.W_in": "mlp.up_proj",
            "mlp.W_out": "mlp.down_proj",
        },
    )


ARCHS: dict[str, Arch] = {
    "llama": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "mistral": _llama_like(),
    "gpt2": Arch(
        blocks="transformer.h",
        hooks={
            "hook_resid_pre": Hook("", "input"),
            "ln1.hook_normalized": Hook("ln_1", "output"),
            "attn.hook_pattern": Hook("attn", "output"),
            "attn.hook_z": Hook("attn.c_proj", "input"),
            "hook_attn_out": Hook("attn.c_proj", "output"),
            "ln2.hook_normalized": Hook("ln_2", "output"),
            "mlp.hook_pre": Hook("mlp.c_fc", "output"),
            "mlp.hook_post": Hook("mlp.c_proj", "input"),
            "hook_mlp_out": Hook("mlp", "output"),
            "hook_resid_post": Hook("", "output"),
        },
        linears={
            "attn.W_Q": "attn.c_attn",
            "attn.W_K": "attn.c_attn",
            "attn.W_V": "attn.c_attn",
            "attn.W_O": "attn.c_proj",
            "mlp.W_in": "mlp.c_fc",
            "mlp.W_out": "mlp.c_proj",
        },
        fused={"attn.W_Q": (0, 3, False), "attn.W_K": (1, 3, False), "attn.W_V": (2, 3, False)},
    ),
    "gpt_neox": Arch(
        blocks="gpt_neox.layers",
        hooks={
            "hook_resid_pre": Hook("", "input"),
            "ln1.hook_normalized": Hook("input_layernorm", "output"),
            "attn.hook_pattern": Hook("attention", "output"),
            "attn.hook_z": Hook("attention.dense", "input"),
            "hook_attn_out": Hook("attention.dense", "output"),
            "ln2.hook_normalized": Hook("post_attention_layernorm", "output"),
            "mlp.hook_pre": Hook("mlp.dense_h_to_4h", "output"),
            "mlp.hook_post": Hook("mlp.dense_4h_to_h", "input"),
            "hook_mlp_out": Hook("mlp", "output"),
            "hook_resid_post": Hook("", "output"),
        },
        linears={
            "attn.W_Q": "attention.query_key_value",
            "attn.W_K": "attention.query_key_value",
            "attn.W_V": "attention.query_key_value",
            "attn.W_O": "attention.dense",
            "mlp.W_in": "mlp.dense_h_to_4h",
            "mlp.W_out": "mlp.dense_4h_to_h",
        },
        fused={"attn.W_Q": (0, 3, True), "attn.W_K": (1, 3, True), "attn.W_V": (2, 3, True)},
    ),
    "opt": Arch(
        blocks="model.decoder.layers",
        hooks={
            "hook_resid_pre": Hook("", "input"),
            "ln1.hook_normalized": Hook("self_attn_layer_norm", "output"),
            "attn.hook_pattern": Hook("self_attn", "output"),
            "attn.hook_z": Hook("self_attn.out_proj", "input"),
            "hook_attn_out": Hook("self_attn.out_proj", "output"),
            "ln2.hook_normalized": Hook("final_layer_norm", "output"),
            "mlp.hook_pre": Hook("fc1", "output"),
            "mlp.hook_post": Hook("fc2", "input"),
            "hook_mlp_out": Hook("fc2", "output"),
            "hook_resid_post": Hook("", "output"),
        },
        linears={
            "attn.W_Q": "self_attn.q_proj",
            "attn.W_K": "self_attn.k_proj",
            "attn.W_V": "self_attn.v_proj",
            "attn.W_O": "self_attn.out_proj",
            "mlp.W_in": "fc1",
            "mlp.W_out": "fc2",
        },
    ),
    # BERT is post-LN: the q/k/v input is the residual stream itself, the MLP input is the attention LayerNorm output.
    "bert": Arch(
        blocks="encoder.layer",
        hooks={
            "hook_resid_pre": Hook("", "input"),
            "ln1.hook_normalized": Hook("attention.self.query", "input"),
            "attn.hook_pattern": Hook("attention.self", "output"),
            "attn.hook_z": Hook("attention.output.dense", "input"),
            "hook_attn_out": Hook("attention.output.dense", "output"),
            "ln2.hook_normalized": Hook("attention.output.LayerNorm", "output"),
            "mlp.hook_pre": Hook("intermediate.dense", "output"),
            "mlp.hook_post": Hook("output.dense", "input"),
            "hook_mlp_out": Hook("output.dense", "output"),
            "hook_resid_post": Hook("", "output"),
        },
        linears={
            "attn.W_Q": "attention.self.query",
            "attn.W_K": "attention.self.key",
            "attn.W_V": "attention.self.value",
            "attn.W_O": "attention.output.dense",
            "mlp.W_in": "intermediate.dense",
            "mlp.W_out": "output.dense",
        },
        causal=False,
    ),
}
ARCHS["roberta"] = ARCHS["bert"]


def _first(x: object) -> torch.Tensor | None:
    """A module's main tensor: the tensor itself, or the first element of a tuple output."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x:
        return x[0] if isinstance(x[0], torch.Tensor) else None
    return None


def _pattern(x: object) -> torch.Tensor | None:
    """Attention probabilities ``[batch, heads, query, key]`` from an attention module's output tuple."""
    if isinstance(x, (tuple, list)) and len(x) > 1 and isinstance(x[1], torch.Tensor) and x[1].dim() == 4:
        return x[1]
    return None


Extract = Callable[[object], "torch.Tensor | None"]


class SiteMap:
    """Resolves site names to hooks and weights on one model.

    For a plain HF model it reads an :class:`Arch` table; for a TransformerLens ``HookedTransformer`` the sites
    are the model's own hook points.
    """

    def __init__(self, model: nn.Module, arch: Arch | None, n_layers: int, hooked: bool = False):
        self.model, self.arch, self.n_layers, self.hooked = model, arch, n_layers, hooked
        if hooked:
            names = set(model.hook_dict)  # type: ignore[attr-defined]
            self.activation_sites = tuple(s for s in ACTIVATION_SITES if f"blocks.0.{s}" in names)
            self.weight_sites: tuple[str, ...] = ()
        else:
            assert arch is not None
            self.activation_sites = tuple(s for s in ACTIVATION_SITES if s in arch.hooks)
            self.weight_sites = tuple(s for s in WEIGHT_SITES if s in arch.linears)

    def check_layer(self, layer: int) -> None:
        if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
            raise UserError(f"layer {layer!r} is not a whole number; give layers as integers, e.g. [0, 5]")
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} does not exist; this model has layers 0..{self.n_layers - 1}")

    def check_site(self, site: str) -> None:
        if site not in self.activation_sites:
            raise UserError(f"unknown site {site!r}; choose from: {', '.join(self.activation_sites)}")

    def block(self, layer: int) -> nn.Module:
        assert self.arch is not None
        return self.model.get_submodule(f"{self.arch.blocks}.{layer}")

    def hook(self, layer: int, site: str) -> tuple[nn.Module, IO, Extract]:
        """The module to hook for ``blocks.{layer}.{site}``, which side, and how to pull the tensor out."""
        self.check_layer(layer)
        self.check_site(site)
        if self.hooked:
            return self.model.hook_dict[site_name(layer, site)], "output", _first  # type: ignore[attr-defined]
        spec = self.arch.hooks[site]  # type: ignore[union-attr]
        block = self.block(layer)
        module = block.get_submodule(spec.module) if spec.module else block
        return module, spec.io, _pattern if site == "attn.hook_pattern" else _first

    def attach(self, layer: int, site: str, fn: Callable[[torch.Tensor], "torch.Tensor | None"]):
        """Call ``fn`` on the tensor at ``blocks.{layer}.{site}`` on every forward; a returned tensor replaces it.

        The one hook mechanism of the package: the recorder observes through it (``fn`` returns None) and
        ablation/patching replaces through it. Returns the handle to ``remove()``.
        """
        module, io, extract = self.hook(layer, site)

        def call(raw):
            t = extract(raw)
            if t is None and site == "attn.hook_pattern":
                raise UserError("attn.hook_pattern needs eager attention; load the model with "
                                "attn_implementation='eager' or drop the site")
            return None if t is None else fn(t)

        if io == "output":
            def post(mod, args, out):
                new = call(out)
                if new is None:
                    return None
                return new if isinstance(out, torch.Tensor) else (new, *out[1:])
            return module.register_forward_hook(post)

        def pre(mod, args, kwargs):
            new = call(args[0] if args else kwargs["hidden_states"])
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def linear(self, layer: int, wsite: str) -> nn.Module:
        """The linear module holding weight site ``blocks.{layer}.{wsite}`` (shared for fused q/k/v)."""
        self.check_layer(layer)
        if wsite not in self.weight_sites:
            raise UserError(f"unknown weight site {wsite!r}; this model has: {', '.join(self.weight_sites)}")
        return self.block(layer).get_submodule(self.arch.linears[wsite])  # type: ignore[union-attr]

    def weight(self, layer: int, wsite: str) -> torch.Tensor:
        """The weight of a weight site as ``[out_features, in_features]`` (a slice of a fused q/k/v matrix)."""
        w = linear_weight(self.linear(layer, wsite))
        fused = self.arch.fused.get(wsite)  # type: ignore[union-attr]
        if fused is None:
            return w
        index, count, interleaved = fused
        if interleaved:  # NeoX lays q/k/v out per head: [heads, 3, head_dim, in]
            heads = self.model.config.num_attention_heads
            return w.reshape(heads, count, -1, w.shape[1])[:, index].reshape(-1, w.shape[1])
        return w.chunk(count, dim=0)[index]

    def linear_names(self) -> list[tuple[int, str]]:
        """Every (layer, weight site) pair; fused sites that share one module appear once, under the first."""
        out, seen = [], set()
        for layer in range(self.n_layers):
            for wsite in self.weight_sites:
                key = (layer, self.arch.linears[wsite])  # type: ignore[union-attr]
                if key not in seen:
                    seen.add(key)
                    out.append((layer, wsite))
        return out


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear's weight as ``[out, in]``: ``nn.Linear`` as is, GPT-2's ``Conv1D`` (stored ``[in, out]``) transposed."""
    w = module.weight
    return w.t() if type(module).__name__ == "Conv1D" else w


def sitemap_for(model: nn.Module, arch: Arch | str | None = None) -> tuple[str, SiteMap]:
    """Build the site map for a model; ``arch`` may name a table or be a custom :class:`Arch`."""
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return "hooked", SiteMap(model, None, model.cfg.n_layers, hooked=True)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(arch, Arch):
        name, table = "custom", arch
    else:
        name = arch or model_type
        if name not in ARCHS:
            raise UserError(
                f"architecture {model_type!r} has no site map; supported: {', '.join(sorted(ARCHS))}. "
                "Pass a custom sparsescope.models.sites.Arch(blocks=..., hooks=..., linears=...) as arch="
            )
        table = ARCHS[name]
    n_layers = len(model.get_submodule(table.blocks))
    return name, SiteMap(model, table, n_layers)

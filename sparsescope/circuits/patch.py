"""Nodes of a model and one way to ablate or patch any subset of them, through the site map's hooks.

A node is a component whose output can be swapped: an attention head, an MLP, an MLP neuron or a whole layer.
``Patcher`` hooks every node site with :meth:`SiteMap.attach` and, per forward, writes

    a' = a + c · (r − a)         c = 1 − keep  (keep = 1 leaves the node exactly as it was)

per node unit, with ``r`` the reference: the node's activation on the corrupted prompt (counterfactual patching,
the default), its mean over a stated reference set (mean ablation) or zero. ``keep`` may be a float tensor with
gradients (learned masks); with a fixed ``direction`` d the update is ``a + c · d`` and ``∂m/∂c`` is the
attribution score (EAP, EAP-IG).

Heads and grouped-query attention: a head's node is its slice of the ``o_proj`` input ``attn.hook_z`` — the
per-query-head attention output ``[heads × head_dim]`` before the output projection. With GQA (SmolLM2: 9 query
heads, 3 KV heads) three query heads share one K/V projection, but each query head still writes its own slice of
``attn.hook_z``, so patching a query head's slice changes that head alone and leaves the shared K/V (and the other
heads of its group) untouched. Nodes are therefore the ``num_attention_heads`` query heads, never the KV heads.
A whole layer's node is the block's own contribution ``resid_post − resid_pre`` (attention plus MLP).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch

from sparsescope.circuits.tasks import Batch, TaskData, logit_diff
from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel

# Which sites carry each level's nodes, and the node kind at each.
LEVELS: dict[str, tuple[tuple[str, str], ...]] = {
    "heads": (("attn.hook_z", "head"), ("hook_mlp_out", "mlp")),
    "neurons": (("attn.hook_z", "head"), ("mlp.hook_post", "neuron")),
    "layers": (("hook_resid_post", "layer"),),
}
ABLATIONS = ("counterfactual", "mean", "zero")


@dataclass(frozen=True)
class Group:
    """The nodes of one kind in one layer: ``units`` nodes of ``width`` channels each, from ``offset`` in the
    flat node vector."""

    layer: int
    site: str
    kind: str
    units: int
    width: int
    offset: int


def shape_of(lm: LoadedModel) -> dict[str, int]:
    """The widths a circuit depends on: layers, query heads, MLP width (a circuit file records these)."""
    cfg = getattr(lm.model, "config", None) or getattr(lm.model, "cfg", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or getattr(cfg, "n_heads")
    if lm.kind == "hooked":
        d_mlp = lm.model.cfg.d_mlp
    else:
        d_mlp = lm.sites.weight(0, "mlp.W_out").shape[1]
    return {"n_layers": lm.n_layers, "n_heads": int(heads), "d_mlp": int(d_mlp)}


def _width(lm: LoadedModel, site: str, kind: str) -> tuple[int, int]:
    """(units, channels per unit) of a node site."""
    shape = shape_of(lm)
    cfg = getattr(lm.model, "config", None) or lm.model.cfg
    d_model = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model")
    if kind == "head":
        head_dim = getattr(cfg, "head_dim", None) or d_model // shape["n_heads"]
        return shape["n_heads"], int(head_dim)
    if kind == "neuron":
        return shape["d_mlp"], 1
    return 1, int(d_model)


def final_logits(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor,
                 last: torch.Tensor | None = None) -> torch.Tensor | None:
    """Logits ``[B, vocab]`` at each prompt's ``last`` token only: the unembedding of the other positions is
    skipped (a fifth of SmolLM2's forward). With ``last=None`` the forward runs for its hooks and returns None."""
    rows = torch.arange(len(ids))
    if lm.kind == "hooked":
        logits = lm.model(ids, return_type="logits")
        return None if last is None else logits[rows, last]
    hidden = lm.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return None if last is None else lm.model.get_output_embeddings()(hidden[rows, last])


class Patcher:
    """Ablate or patch any set of nodes of one level (``heads``, ``neurons`` or ``layers``) of a model."""

    levels = tuple(LEVELS)  # the levels this class patches (a subclass patches others: SAE features)

    def __init__(self, lm: LoadedModel, level: str = "heads", ablation: str = "counterfactual",
                 reference: TaskData | None = None, batch_size: int = 32):
        if level not in self.levels:
            raise UserError(f"unknown level {level!r}; choose from: {', '.join(LEVELS)}, edges, features (with an "
                            "SAE)")
        if ablation not in ABLATIONS:
            raise UserError(f"unknown ablation {ablation!r}; choose from: {', '.join(ABLATIONS)}")
        if ablation == "mean" and reference is None:
            raise UserError("mean ablation needs a reference set of prompts; pass reference=TaskData")
        if lm.kind == "hooked" and level == "layers":
            raise UserError("the layers level needs a Hugging Face model; load the model without TransformerLens")
        self.lm, self.level, self.ablation, self.batch_size = lm, level, ablation, batch_size
        self.shape = shape_of(lm)
        self.groups = self._groups()
        self.n_nodes = sum(g.units for g in self.groups)
        self.nodes = pd.DataFrame([dict(layer=g.layer, kind=g.kind, index=i) for g in self.groups
                                   for i in range(g.units)])
        self.means = self._mean(reference) if ablation == "mean" else None

    def _groups(self) -> list[Group]:
        """Every node site of the level, in layer order, with its offset in the flat node vector."""
        groups: list[Group] = []
        offset = 0
        for layer in range(self.lm.n_layers):
            for site, kind in LEVELS[self.level]:
                units, width = _width(self.lm, site, kind)
                groups.append(Group(layer, site, kind, units, width, offset))
                offset += units
        return groups

    # -- forward passes ----------------------------------------------------------------------------------------------
    def _logits(self, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor | None:
        return final_logits(self.lm, ids, mask, last)

    @contextmanager
    def _hooks(self, fn) -> Iterator[None]:
        """Attach ``fn(group, activation [B, T, units·width]) -> replacement or None`` at every node site."""
        handles, inputs = [], {}
        sites = self.lm.sites
        try:
            for g in self.groups:
                if g.kind == "layer":  # a block's node is its own contribution out − in
                    handles.append(sites.attach(g.layer, "hook_resid_pre",
                                                lambda x, g=g: inputs.__setitem__(g.layer, x)))

                    def block(x, g=g):
                        delta = x - inputs[g.layer]
                        new = fn(g, delta)
                        return None if new is None else x + (new - delta)  # exactly x when new is delta
                    handles.append(sites.attach(g.layer, g.site, block))
                else:
                    def node(x, g=g):
                        flat = x.reshape(*x.shape[:2], -1)
                        new = fn(g, flat)
                        return None if new is None else new.reshape(x.shape)
                    handles.append(sites.attach(g.layer, g.site, node))
            yield
        finally:
            for h in handles:
                h.remove()
            inputs.clear()

    @torch.no_grad()
    def capture(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[Group, torch.Tensor]:
        """Every node site's activation ``[B, T, units·width]`` on one unpatched forward."""
        acts: dict[Group, torch.Tensor] = {}

        def keep(g, a):
            acts[g] = a.detach().clone()
        with self._hooks(keep):
            self._logits(ids, mask)
        return acts

    def _mean(self, data: TaskData) -> dict[Group, torch.Tensor]:
        """Mean of each node channel over every real token of the reference prompts (clean side)."""
        sums: dict[Group, torch.Tensor] = {}
        count = 0
        for b in data.batches(self.batch_size):
            valid = b.mask.bool()
            for g, a in self.capture(b.clean, b.mask).items():
                sums[g] = sums.get(g, 0) + a[valid].double().sum(0)
            count += int(valid.sum())
        return {g: (s / count).float() for g, s in sums.items()}

    def references(self, batch: Batch) -> dict[Group, torch.Tensor]:
        """The activation each node is replaced by for this batch (broadcastable to ``[B, T, units·width]``)."""
        if self.ablation == "counterfactual":
            return self.capture(batch.corrupt, batch.mask)
        if self.ablation == "mean":
            return self.means  # type: ignore[return-value]
        return {g: torch.zeros(g.units * g.width) for g in self.groups}

    def directions(self, refs: dict[Group, torch.Tensor], clean: dict[Group, torch.Tensor]) -> dict[Group, torch.Tensor]:
        """δ = reference − clean activation per node site: the fixed direction attribution differentiates along."""
        return {g: refs[g] - clean[g] for g in self.groups}

    @torch.no_grad()
    def moved(self, prepared: list[tuple[Batch, dict]]) -> torch.Tensor:
        """Nodes whose reference differs from the clean activation somewhere in ``prepared``: patching any other node
        is the identity (``a + c · 0``), so its exact effect is exactly 0 without a forward. (An SAE feature that is
        the same on clean and corrupted prompts — most of them — never moves.)"""
        out = torch.zeros(self.n_nodes, dtype=torch.bool)
        for b, refs in prepared:
            clean = self.capture(b.clean, b.mask)
            for g, d in self.directions(refs, clean).items():
                d = d.expand_as(clean[g]).reshape(-1, g.units, g.width)
                out[g.offset: g.offset + g.units] |= (d != 0).any(-1).any(0)
        return out

    def forward(self, batch: Batch, keep: torch.Tensor | None = None, refs: dict | None = None,
                direction: dict | None = None, coef: torch.Tensor | None = None,
                embed: torch.Tensor | None = None) -> torch.Tensor:
        """Per-prompt metric with nodes patched: ``keep`` [nodes] (1 = untouched) against ``refs``, or the
        attribution form ``a + coef · direction``. ``embed`` replaces the embeddings (integrated gradients)."""
        if keep is not None and keep.shape != (self.n_nodes,):
            raise UserError(f"a mask over {keep.shape[0]} nodes does not fit this model's {self.n_nodes} "
                            f"{self.level} nodes; build the mask for this model")

        def patch(g: Group, a: torch.Tensor):
            if direction is not None:
                c = coef[g.offset: g.offset + g.units].repeat_interleave(g.width)
                return a + c * direction[g]
            if keep is None:
                return None
            c = (1 - keep[g.offset: g.offset + g.units]).repeat_interleave(g.width).to(a.dtype)
            return a + c * (refs[g] - a)

        handles = []
        if embed is not None:
            handles.append(self.lm.sites.attach(0, "hook_resid_pre", lambda x: embed))
        try:
            with self._hooks(patch):
                logits = self._logits(batch.clean, batch.mask, batch.last)
        finally:
            for h in handles:
                h.remove()
        return logit_diff(logits, batch)

    def prepare(self, data: TaskData) -> list[tuple[Batch, dict]]:
        """Each batch of ``data`` with its references, computed once and reused by every patched run."""
        return [(b, self.references(b)) for b in data.batches(self.batch_size)]

    @torch.no_grad()
    def metric(self, prepared: list[tuple[Batch, dict]], keep: torch.Tensor | None = None) -> float:
        """Mean metric over all prompts with ``keep`` applied (None = the unpatched model)."""
        total, n = 0.0, 0
        for b, refs in prepared:
            total += float(self.forward(b, keep, refs).sum())
            n += len(b.last)
        return total / n

    def per_prompt(self, prepared: list[tuple[Batch, dict]], keep: torch.Tensor | None = None,
                   corrupt: bool = False) -> torch.Tensor:
        """Metric per prompt, on the clean prompts (patched by ``keep``) or on the corrupted ones."""
        out = []
        with torch.no_grad():
            for b, refs in prepared:
                if corrupt:
                    out.append(logit_diff(self._logits(b.corrupt, b.mask, b.last), b))
                else:
                    out.append(self.forward(b, keep, refs))
        return torch.cat(out)

    def mask_from(self, nodes: pd.DataFrame) -> torch.Tensor:
        """A keep-vector with 1 at the given ``layer, kind, index`` rows and 0 elsewhere; unknown nodes refused."""
        index = {(r.layer, r.kind, r.index): i for i, r in enumerate(self.nodes.itertuples())}
        keep = torch.zeros(self.n_nodes)
        for r in nodes.itertuples():
            key = (int(r.layer), str(r.kind), int(r.index))
            if key not in index:
                raise UserError(f"component {key[1]} {key[2]} of layer {key[0]} is not a {self.level}-level node "
                                f"of this model ({self.shape}); check the circuit file and --level")
            keep[index[key]] = 1.0
        return keep


def parse_components(text: str) -> pd.DataFrame:
    """``"L3H2,L5.mlp,L4N17,L7,L6F12,L6.err"`` → rows of ``layer, kind, index`` (head, mlp, neuron, layer, SAE
    feature, SAE error term)."""
    import re

    rows = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        m = re.fullmatch(r"L(\d+)(?:H(\d+)|N(\d+)|\.(mlp)|F(\d+)|\.(err))?", part, re.IGNORECASE)
        if not m:
            raise UserError(f"bad component {part!r}; write L3H2 (head), L3.mlp, L3N17 (neuron), L3 (layer), "
                            "L6F12 (SAE feature) or L6.err (SAE error term)")
        layer = int(m.group(1))
        if m.group(2) is not None:
            rows.append(dict(layer=layer, kind="head", index=int(m.group(2))))
        elif m.group(3) is not None:
            rows.append(dict(layer=layer, kind="neuron", index=int(m.group(3))))
        elif m.group(4):
            rows.append(dict(layer=layer, kind="mlp", index=0))
        elif m.group(5) is not None:
            rows.append(dict(layer=layer, kind="feature", index=int(m.group(5))))
        elif m.group(6):
            rows.append(dict(layer=layer, kind="sae_error", index=0))
        else:
            rows.append(dict(layer=layer, kind="layer", index=0))
    if not rows:
        raise UserError("no components given; write e.g. L3H2,L5.mlp")
    return pd.DataFrame(rows)

"""Edges: the paths from an upstream node's output to a downstream node's input, patched one at a time.

MIB's circuit-localisation track scores circuits of edges, not nodes. In a pre-LayerNorm transformer every node reads
the residual stream, which is the sum of every earlier node's output, so each (writer, reader) pair is an edge:

* upstream nodes (writers): the embeddings, every attention head (its slice of ``o_proj`` applied to its own slice
  of ``attn.hook_z``) and every MLP (``hook_mlp_out``);
* downstream nodes (readers): the query input of every query head, the key and value inputs of every KV head (with
  grouped-query attention, SmolLM2's 3 KV heads are each read by 3 query heads, so a K/V input belongs to the KV
  head, not to a query head), every MLP input, and the logits (the final residual stream).

A reader's input in a patched forward is

    x_d = resid_d + Σ_u c[u, d] · (r_u − a_u)          c = 1 − keep

with ``resid_d`` the residual stream it would read (the sum of the *current* outputs of all earlier writers), ``a_u``
writer u's current output and ``r_u`` its reference (its output on the corrupted prompt, a mean, or zero): a removed
edge delivers the reference instead of the live output, to that reader only. LayerNorm is applied to each reader's
own ``x_d``; ``keep = 1`` everywhere is the unpatched model exactly, ``keep = 0`` everywhere feeds every reader
references only, which for counterfactual patching is exactly the model run on the corrupted prompt.

With a fixed direction ``δ_u = r_u − a_u(clean)`` and coefficients ``c`` at 0, ``∂m/∂c[u,d] = δ_u · ∂m/∂x_d`` is the
edge attribution score (EAP; EAP-IG averages the gradient over inputs interpolated from corrupted to clean), so one
forward and one backward score every edge at once. ``EdgePatcher`` has the interface of
:class:`~sparsescope.circuits.patch.Patcher` (``n_nodes`` counts edges here), so faithfulness curves, exact
patching and attribution run on edges unchanged.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from sparsescope.circuits.patch import ABLATIONS, final_logits
from sparsescope.circuits.tasks import Batch, TaskData, logit_diff
from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel


EDGE_ARCHS = ("llama", "qwen2", "qwen3", "mistral")  # block = x + attn(ln1(x)), then + mlp(ln2(·)); q/k/v separate


def _config(lm: LoadedModel) -> tuple[int, int, int, int]:
    """(query heads, KV heads, head dim, d_model) of a Hugging Face model."""
    cfg = lm.model.config
    heads = cfg.num_attention_heads
    d = cfg.hidden_size
    return heads, getattr(cfg, "num_key_value_heads", None) or heads, getattr(cfg, "head_dim", None) or d // heads, d


SPARSE_MAX = 0.15  # sum over the smaller side of the edges only while it is this sparse; denser: one dense product


def edge_sum(c: torch.Tensor, d: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    """``cᵀ @ d`` (coefficients ``[writers, readers]``, writers' δ ``[writers, n]``) summed over the smaller side of
    the edges: the removed ones (``c ≠ 0``), or — when most edges are removed, as in a small circuit — ``Σ_u δ_u``
    (``total`` if the caller keeps it) minus the kept ones (``c ≠ 1``), as a sparse product while that side holds
    under :data:`SPARSE_MAX` of the entries. Nothing removed gives exact zeros (the unpatched model stays
    bit-exact); coefficients with gradients (masks, attribution) take the dense product."""
    if c.requires_grad:
        return c.t() @ d
    removed, kept = int(c.ne(0).sum()), int(c.ne(1).sum())
    if removed == 0:
        return d.new_zeros(c.shape[1], d.shape[1])
    if min(removed, kept) > SPARSE_MAX * c.numel():
        return c.t() @ d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if removed <= kept:
            return c.t().to_sparse_csr() @ d
        total = d.sum(0) if total is None else total
        return total.unsqueeze(0) - (1 - c).t().to_sparse_csr() @ d


class Deltas:
    """Writers' δ in forward order as one ``[writers, B·T·d]`` matrix, so a reader group's input is one matrix product
    ``coefᵀ @ δ`` (not one accumulation per writer chunk, which is memory-bound). Rows are written in place into one
    buffer, unless gradients must flow through them (a learned mask): then the chunks are concatenated on demand."""

    def __init__(self, full: torch.Tensor | None = None, grad: bool = False):
        self.buf, self.parts, self.grad = full, [], grad
        self.n = 0 if full is None else len(full)
        self.sum: torch.Tensor | None = None  # Σ of the rows added so far (patched forwards without gradients)

    def add(self, delta: torch.Tensor, total: int) -> None:
        flat = delta.reshape(len(delta), -1)
        if self.grad:
            self.parts.append(flat)
        else:
            if self.buf is None:
                self.buf = flat.new_empty(total, flat.shape[1])
            self.buf[self.n: self.n + len(flat)] = flat
            self.sum = flat.sum(0) if self.sum is None else self.sum + flat.sum(0)
        self.n += len(flat)

    def rows(self, n: int) -> torch.Tensor:
        return torch.cat(self.parts)[:n] if self.grad else self.buf[:n]

    def total(self, n: int) -> torch.Tensor | None:
        """Σ of the first ``n`` rows when it is kept (every row added so far), else None."""
        return self.sum if n == self.n else None


class EdgePatcher:
    """Patch, ablate or attribute any set of edges of a pre-LayerNorm decoder with separate q/k/v projections."""

    level = "edges"

    def __init__(self, lm: LoadedModel, ablation: str = "counterfactual", reference: TaskData | None = None,
                 batch_size: int = 32):
        if ablation not in ABLATIONS:
            raise UserError(f"unknown ablation {ablation!r}; choose from: {', '.join(ABLATIONS)}")
        if ablation == "mean" and reference is None:
            raise UserError("mean ablation needs a reference set of prompts; pass reference=TaskData")
        model_type = getattr(getattr(lm.model, "config", None), "model_type", None)
        if lm.kind != "hf" or model_type not in EDGE_ARCHS:
            raise UserError(f"edge patching needs a pre-LayerNorm decoder with separate q/k/v projections "
                            f"({', '.join(EDGE_ARCHS)}); {lm.name!r} is {model_type or lm.kind} — use a node level "
                            "(--level heads)")
        self.lm, self.ablation, self.batch_size = lm, ablation, batch_size
        self.H, self.G, self.dh, self.d = _config(lm)
        L, H, G = lm.n_layers, self.H, self.G
        # writers: embed, then per layer its H heads and its MLP; chunk j = the writers added at one hook
        up = [("embed", -1, "embed", 0)]
        for layer in range(L):
            up += [(f"L{layer}H{h}", layer, "head", h) for h in range(H)] + [(f"L{layer}.mlp", layer, "mlp", 0)]
        self.up = pd.DataFrame(up, columns=["name", "layer", "kind", "index"])
        # readers: per layer H queries, G keys, G values, the MLP input; then the logits
        self.per_layer = H + 2 * G + 1
        down = []
        for layer in range(L):
            down += [(f"L{layer}H{h}.q", layer, "q", h) for h in range(H)]
            down += [(f"L{layer}KV{g}.k", layer, "k", g) for g in range(G)]
            down += [(f"L{layer}KV{g}.v", layer, "v", g) for g in range(G)]
            down += [(f"L{layer}.mlp", layer, "mlp_in", 0)]
        down.append(("logits", L, "logits", 0))
        self.down = pd.DataFrame(down, columns=["name", "layer", "kind", "index"])
        # writers before each reader: everything up to the previous layer; an MLP also reads its own layer's heads
        self.reads = np.array([1 + r.layer * (H + 1) + (H if r.kind == "mlp_in" else 0) if r.kind != "logits"
                               else len(up) for r in self.down.itertuples()])
        valid = np.arange(len(up))[:, None] < self.reads[None, :]
        self.pairs = torch.from_numpy(np.argwhere(valid))  # [edges, 2] (writer, reader), row-major
        self.n_nodes = len(self.pairs)  # the units ranked and patched are edges (named as in Patcher)
        u, v = self.pairs[:, 0].numpy(), self.pairs[:, 1].numpy()
        self.nodes = pd.DataFrame({"up": self.up["name"].to_numpy()[u], "down": self.down["name"].to_numpy()[v],
                                   "up_layer": self.up["layer"].to_numpy()[u],
                                   "down_layer": self.down["layer"].to_numpy()[v]})
        self.shape = {"n_layers": L, "n_heads": H, "n_kv_heads": G, "d_model": self.d}
        self.means = self._mean(reference) if ablation == "mean" else None

    # -- the matrix of coefficients --------------------------------------------------------------------------------
    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """Edge values ``[edges]`` as a ``[writers, readers]`` matrix, zero where no edge exists (differentiable)."""
        m = torch.zeros(len(self.up), len(self.down), dtype=values.dtype)
        return m.index_put((self.pairs[:, 0], self.pairs[:, 1]), values)

    def _chunks(self) -> list[int]:
        """Writers added at each hook, in forward order: the embeddings, then per layer H heads and one MLP."""
        return [1] + [self.H, 1] * self.lm.n_layers

    # -- the patched forward ---------------------------------------------------------------------------------------
    @contextmanager
    def _hooks(self, coef: torch.Tensor | None, deltas: Deltas, on_write, embed: torch.Tensor | None):
        """Hooks for one forward. ``coef`` [writers, readers] (None: readers read the plain residual stream);
        ``deltas`` gets each writer chunk's δ from ``on_write(chunk, outputs)`` as the forward reaches it, unless it
        was given in full up front; ``embed`` replaces the embeddings."""
        sites, H, G, dh = self.lm.sites, self.H, self.G, self.dh
        handles, ln_in, chunk = [], {}, [0]

        def mixed(x: torch.Tensor, cols: slice) -> torch.Tensor:
            """``x + Σ_u coef[u, cols] · δ_u`` over the writers before these readers: ``[readers, B, T, d]``."""
            n_up = int(self.reads[cols.start])
            c = coef[:n_up, cols].to(x.dtype)
            return x + edge_sum(c, deltas.rows(n_up), deltas.total(n_up)).view(cols.stop - cols.start, *x.shape)

        def write(outputs: torch.Tensor) -> None:
            on_write(chunk[0], outputs)
            chunk[0] += 1

        def block_in(layer):
            def fn(x):
                if layer == 0:
                    x = x if embed is None else embed
                    write(x.unsqueeze(0))
                if coef is not None:
                    start = layer * self.per_layer
                    ln = sites.hook(layer, "ln1.hook_normalized")[0]
                    ln_in[layer] = ln(mixed(x, slice(start, start + H + 2 * G)))  # [H+2G, B, T, d]
                return x if layer == 0 and embed is not None else None
            return fn

        def projection(layer, which, first, count):
            linear = sites.linear(layer, which)

            def fn(mod, args, out):
                x = ln_in[layer][first: first + count]  # [count, B, T, d]
                w = mod.weight.view(count, dh, -1)
                new = torch.einsum("hbti,hoi->btho", x, w).reshape(out.shape)
                return new if mod.bias is None else new + mod.bias
            return linear.register_forward_hook(fn)

        def heads_out(layer):
            w_o = sites.weight(layer, "attn.W_O").view(self.d, H, dh)

            def fn(z):
                write(torch.einsum("bthk,dhk->hbtd", z.reshape(*z.shape[:2], H, dh), w_o))
            return fn

        def mlp_in(layer):
            col = layer * self.per_layer + H + 2 * G

            def fn(mod, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                new = mixed(x, slice(col, col + 1))[0]
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
            return fn

        try:
            for layer in range(self.lm.n_layers):
                handles.append(sites.attach(layer, "hook_resid_pre", block_in(layer)))
                if coef is not None:
                    handles += [projection(layer, "attn.W_Q", 0, H), projection(layer, "attn.W_K", H, G),
                                projection(layer, "attn.W_V", H + G, G)]
                    ln2 = sites.hook(layer, "ln2.hook_normalized")[0]
                    handles.append(ln2.register_forward_pre_hook(mlp_in(layer), with_kwargs=True))
                handles.append(sites.attach(layer, "attn.hook_z", heads_out(layer)))
                handles.append(sites.attach(layer, "hook_mlp_out", lambda x: write(x.unsqueeze(0))))
            if coef is not None:
                last = len(self.down) - 1
                handles.append(sites.attach(self.lm.n_layers - 1, "hook_resid_post",
                                            lambda x: mixed(x, slice(last, last + 1))[0]))
            yield
        finally:
            for h in handles:
                h.remove()
            ln_in.clear()

    @torch.no_grad()
    def capture(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Every writer's output on one unpatched forward, one ``[n, B, T, d]`` tensor per chunk."""
        outs: list[torch.Tensor] = []
        with self._hooks(None, Deltas(), lambda j, a: outs.append(a.detach().clone()), None):
            final_logits(self.lm, ids, mask)
        return outs

    def _mean(self, data: TaskData) -> list[torch.Tensor]:
        """Each writer's mean output over every real token of the reference prompts: ``[n, 1, 1, d]`` per chunk."""
        sums, count = None, 0
        for b in data.batches(self.batch_size):
            valid = b.mask.bool()
            outs = [a[:, valid].double().sum(1) for a in self.capture(b.clean, b.mask)]
            sums = outs if sums is None else [s + o for s, o in zip(sums, outs)]
            count += int(valid.sum())
        return [(s / count).float()[:, None, None, :] for s in sums]

    def references(self, batch: Batch) -> list[torch.Tensor]:
        """What each writer's edges deliver when removed, for this batch (chunks, broadcastable to its outputs)."""
        if self.ablation == "counterfactual":
            return self.capture(batch.corrupt, batch.mask)
        if self.ablation == "mean":
            return self.means  # type: ignore[return-value]
        dtype = next(self.lm.model.parameters()).dtype
        return [torch.zeros(n, 1, 1, self.d, dtype=dtype) for n in self._chunks()]

    def directions(self, refs: list[torch.Tensor], clean: list[torch.Tensor]) -> torch.Tensor:
        """δ = reference − clean output of every writer, ``[writers, B·T·d]``: the fixed direction attribution
        differentiates along."""
        return torch.cat([(r - c).reshape(len(c), -1) for r, c in zip(refs, clean)])

    def forward(self, batch: Batch, keep: torch.Tensor | None = None, refs: list | None = None,
                direction: torch.Tensor | None = None, coef: torch.Tensor | None = None,
                embed: torch.Tensor | None = None) -> torch.Tensor:
        """Per-prompt metric with edges patched: ``keep`` [edges] (1 = live output) against ``refs``, or the
        attribution form with a fixed ``direction`` (:meth:`directions`) and ``coef`` [edges]. ``embed`` replaces the embeddings."""
        if keep is not None and keep.shape != (self.n_nodes,):
            raise UserError(f"a mask over {keep.shape[0]} edges does not fit this model's {self.n_nodes} edges; "
                            "build the mask for this model")
        if direction is not None:
            deltas, c = Deltas(direction), self.matrix(coef)
            on_write = lambda j, a: None  # noqa: E731  (the directions are fixed)
        elif keep is not None:
            deltas, c = Deltas(grad=keep.requires_grad and torch.is_grad_enabled()), self.matrix(1 - keep)
            on_write = lambda j, a: deltas.add(refs[j] - a, len(self.up))  # noqa: E731
        else:
            deltas, c, on_write = Deltas(), None, lambda j, a: None  # noqa: E731
        with self._hooks(c, deltas, on_write, embed):
            logits = final_logits(self.lm, batch.clean, batch.mask, batch.last)
        return logit_diff(logits, batch)

    def prepare(self, data: TaskData) -> list[tuple[Batch, list]]:
        """Each batch of ``data`` with its references, computed once and reused by every patched run."""
        return [(b, self.references(b)) for b in data.batches(self.batch_size)]

    @torch.no_grad()
    def metric(self, prepared, keep: torch.Tensor | None = None) -> float:
        """Mean metric over all prompts with ``keep`` applied (None = the unpatched model)."""
        total = sum(float(self.forward(b, keep, refs).sum()) for b, refs in prepared)
        return total / sum(len(b.last) for b, _ in prepared)

    def per_prompt(self, prepared, keep: torch.Tensor | None = None, corrupt: bool = False) -> torch.Tensor:
        """Metric per prompt, on the clean prompts (patched by ``keep``) or on the corrupted ones."""
        with torch.no_grad():
            return torch.cat([logit_diff(final_logits(self.lm, b.corrupt, b.mask, b.last), b) if corrupt
                              else self.forward(b, keep, refs) for b, refs in prepared])

    def mask_from(self, edges: pd.DataFrame) -> torch.Tensor:
        """A keep-vector with 1 at the given ``up, down`` edges and 0 elsewhere; unknown edges refused."""
        index = {(u, d): i for i, (u, d) in enumerate(zip(self.nodes["up"], self.nodes["down"]))}
        keep = torch.zeros(self.n_nodes)
        for u, d in zip(edges["up"], edges["down"]):
            if (u, d) not in index:
                raise UserError(f"edge {u} → {d} is not an edge of this model ({self.shape}); check the circuit "
                                "file and the model")
            keep[index[(u, d)]] = 1.0
        return keep

"""SAE-feature nodes: ablate, patch and attribute the features of a trained sparse autoencoder at one site.

At the SAE's site the activation ``x`` is written as its reconstruction plus an error term,

    x = decode(f) + ε        f = encode(x),  ε = x − decode(f)

and the nodes are the ``d_sae`` features ``f_i`` plus one node for the error ``ε`` (kind ``sae_error``, as in
Marks et al. 2024, "Sparse feature circuits": without it a feature circuit would be scored against the SAE's
reconstruction loss, not against the model). A patch changes features and error to ``f'`` and ``ε'`` and the site
becomes

    x' = x + (decode(f') − decode(f)) + (ε' − ε)

so with nothing patched (``f' = f``, ``ε' = ε``) both differences are exactly zero and the model is bit-for-bit
unchanged — the SAE is an instrument, never a replacement of the model. Everything else (references, mean
ablation, attribution along ``a + c · δ``, masks, scores) is :class:`~sparsescope.circuits.patch.Patcher`'s own
code path, applied to the feature activations instead of a component's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sparsescope.circuits.patch import Group, Patcher, shape_of
from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel


BASIS = "basis:"  # --sae basis:<site>: the site's own coordinates as the nodes (the baseline for SAE features)


class Basis:
    """The site's own coordinates as a dictionary: encode and decode are the identity, so the error is exactly 0 and
    the "features" are the site's neurons (an MLP site) or residual dimensions. A feature circuit's baseline: is it
    smaller than a circuit of the raw units at the same site?"""

    def __init__(self, width: int):
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(d_sae=width, d_in=width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f


def load_checked(lm: LoadedModel, path: str | Path):
    """``(sae, site)`` of an SAE checkpoint folder (or ``basis:<site>``), refusing one that does not fit ``lm``: a
    site the model lacks, another input width, or (where the checkpoint records it) another model revision."""
    from sparsescope.sae.activations import check_sites
    from sparsescope.sae.evaluate import check_width, site_width
    from sparsescope.sae.train import load_sae

    if str(path).startswith(BASIS):
        site = str(path)[len(BASIS):]
        check_sites(lm, [site])
        return Basis(site_width(lm, site)), site
    sae, manifest = load_sae(path)
    site = manifest.get("site") or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if not site:
        raise UserError(f"SAE {path} does not say which site it reads; train it with `sparsescope sae train`")
    revision = manifest.get("model_revision")
    if revision and lm.revision and revision != lm.revision:
        raise UserError(f"SAE {path} was trained on {manifest.get('model')!r} (revision {revision}), not on "
                        f"{lm.name!r} (revision {lm.revision}); pass --model {manifest.get('model')} or another SAE")
    check_sites(lm, [site])
    check_width(sae, lm, site)
    return sae, site


class FeaturePatcher(Patcher):
    """Ablate or patch any set of an SAE's features (and its error term) at the SAE's site."""

    levels = ("features",)

    def __init__(self, lm: LoadedModel, sae_path: str | Path, ablation: str = "counterfactual", reference=None,
                 batch_size: int = 32):
        from sparsescope.models.sites import parse_site

        self.sae, self.site = load_checked(lm, sae_path)
        self.sae_path = str(sae_path)
        self.sae_layer, self.sae_site = parse_site(self.site)
        super().__init__(lm, "features", ablation, reference, batch_size)
        self.shape = shape_of(lm) | {"sae_site": self.site, "d_sae": int(self.sae.cfg.d_sae)}
        self.error_node = self.n_nodes - 1  # the error term's node comes after every feature

    def _groups(self) -> list[Group]:
        d_sae, d_in = int(self.sae.cfg.d_sae), int(self.sae.cfg.d_in)
        return [Group(self.sae_layer, self.sae_site, "feature", d_sae, 1, 0),
                Group(self.sae_layer, self.sae_site, "sae_error", 1, d_in, d_sae)]

    @contextmanager
    def _hooks(self, fn) -> Iterator[None]:
        """One hook at the SAE's site: ``fn`` sees the features ``[B, T, d_sae]`` and the error ``[B, T, d_in]``
        and may return replacements; the site gets ``x`` plus the two differences (exactly ``x`` if none)."""
        feat, err = self.groups

        def splice(x: torch.Tensor):
            flat = x.reshape(*x.shape[:2], -1)
            f = self.sae.encode(flat.float())
            x_hat = self.sae.decode(f)
            e = flat.float() - x_hat
            new_f, new_e = fn(feat, f), fn(err, e)
            if new_f is None and new_e is None:
                return None
            delta = torch.zeros_like(x_hat)
            if new_f is not None:
                delta = delta + (self.sae.decode(new_f) - x_hat)
            if new_e is not None:
                delta = delta + (new_e - e)
            return (flat + delta.to(flat.dtype)).reshape(x.shape)

        handle = self.lm.sites.attach(self.sae_layer, self.sae_site, splice)
        try:
            yield
        finally:
            handle.remove()


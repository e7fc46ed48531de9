"""Activation source for SAEs: record sites of any model once into a float16 cache on disk, then stream shuffled
batches from it into sae-lens's trainer (its data provider is any iterator of ``[batch, d_in]`` tensors).

Recording is the slow part on a CPU (a forward pass per token), so it happens once per run: every site asked for
is captured in the same pass (several SAEs, even at several sites, train from one pass), and the forward pass
stops as soon as the deepest wanted site has been seen. Text is cut into windows of ``context`` tokens
(no special tokens); position 0 of every window is left out everywhere (its norms are far from every other
position's, the attention-sink effect), so each window gives ``context - 1`` rows.

Memory while recording: one batch of activations. While streaming: the shuffle buffer, ``buffer_tokens × d_in × 4``
bytes (32768 × 1536 × 4 = 201 MB for a SmolLM2 MLP site), plus one batch. The cache itself is a memory map.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsescope.errors import UserError
from sparsescope.models.loading import LoadedModel
from sparsescope.models.sites import parse_site

META = "meta.json"
TOKENS = "tokens.npy"


def check_sites(lm: LoadedModel, sites: Sequence[str]) -> list[tuple[int, str]]:
    """``["blocks.6.mlp.hook_post"]`` → ``[(6, "mlp.hook_post")]``, refusing sites this model does not have."""
    keys = []
    for name in sites:
        layer, site = parse_site(name)
        lm.sites.check_layer(layer)
        lm.sites.check_site(site)
        if site == "attn.hook_pattern":
            raise UserError("attn.hook_pattern is not a vector per token; pick another site, e.g. attn.hook_z")
        keys.append((layer, site))
    return keys


def token_windows(ids: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive, non-overlapping windows of exactly ``size`` tokens; a shorter tail is dropped.

    The one length control for every comparison here (training text, held-out text, ID and OOD prompts): every
    window has the same length, and statistics skip its position 0."""
    if size < 2:
        raise UserError(f"window size {size} is too small; use at least 2 tokens (e.g. 32)")
    return [list(ids[i: i + size]) for i in range(0, len(ids) - size + 1, size)]


def text_windows(lm: LoadedModel, text: str, size: int, max_windows: int | None = None) -> torch.Tensor:
    """``[n, size]`` token ids of ``text`` cut into windows (tokenized without special tokens)."""
    ids = lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long texts are cut below
    windows = token_windows(ids, size)[:max_windows]
    if not windows:
        raise UserError(f"the text has {len(ids)} tokens, fewer than one window of {size}; give a longer text")
    return torch.tensor(windows, dtype=torch.long)


class _Stop(Exception):
    """Raised by the last wanted hook: the rest of the forward pass is not needed."""


def capture(lm: LoadedModel, keys: Sequence[tuple[int, str]], windows: torch.Tensor, batch_size: int,
            sink: Callable[[int, dict[tuple[int, str], torch.Tensor]], None],
            progress: Callable[[int], None] | None = None) -> None:
    """Run ``windows`` in batches and hand ``sink(first_window, {key: [b, size - 1, d] float32})`` each batch's
    activations at every site (position 0 dropped); the forward stops after the last site is seen."""
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def observer(key):
        def observe(t):
            seen[key] = t.detach().reshape(current[0], windows.shape[1], -1)[:, 1:].float()
            if len(seen) == len(keys):
                raise _Stop
        return observe

    current = [0]
    handles = [lm.sites.attach(*key, observer(key)) for key in keys]
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start: start + batch_size]
            current[0] = len(batch)
            seen.clear()
            try:
                lm.forward(batch, torch.ones_like(batch))
            except _Stop:
                pass
            if len(seen) != len(keys):
                raise UserError(f"sites {sorted(set(keys) - set(seen))} produced no tensor in the forward pass; "
                                "pick another site")
            sink(start, dict(seen))
            if progress:
                progress(int(batch.numel()))
    finally:
        for h in handles:
            h.remove()


@dataclass
class ActivationCache:
    """Recorded activations on disk: ``<site>.npy`` (float16 ``[rows, d]``) per site, ``tokens.npy`` (the windows)
    and ``meta.json``. Row r is window ``r // (context - 1)``, position ``1 + r % (context - 1)``."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: Path | str) -> "ActivationCache":
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} holds no readable activation cache ({META} missing or broken); "
                            "record one with `sparsescope sae train`") from None
        return cls(path, meta)

    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def array(self, site: str) -> np.ndarray:
        """The ``[rows, d]`` float16 memory map of one site."""
        if site not in self.meta["sites"]:
            raise UserError(f"the activation cache at {self.path} has no site {site!r} (it has: "
                            f"{', '.join(self.sites)}); record it with --cache-sites")
        return np.load(self.path / f"{site}.npy", mmap_mode="r")

    def tokens(self) -> np.ndarray:
        return np.load(self.path / TOKENS)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window, position) of cache rows."""
        per = self.meta["context"] - 1
        return rows // per, 1 + rows % per


def record_cache(lm: LoadedModel, sites: Sequence[str], text: str, path: Path | str, context: int = 128,
                 max_tokens: int | None = None, batch_size: int = 8, text_name: str = "",
                 progress: Callable[[int], None] | None = None) -> ActivationCache:
    """Record ``sites`` over ``text`` into a new cache folder ``path``, written under a temporary name and renamed
    when complete (an interrupted recording leaves no cache behind). ``max_tokens`` caps the rows per site."""
    keys = check_sites(lm, sites)
    path = Path(path)
    max_windows = None if max_tokens is None else max(1, -(-max_tokens // (context - 1)))
    windows = text_windows(lm, text, context, max_windows)
    n_rows = len(windows) * (context - 1)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[tuple[int, str], np.ndarray] = {}
    per = context - 1

    def sink(first: int, acts: dict) -> None:
        for key, x in acts.items():
            if key not in arrays:
                arrays[key] = np.lib.format.open_memmap(tmp / f"{_name(key)}.npy", mode="w+", dtype=np.float16,
                                                        shape=(n_rows, x.shape[-1]))
            flat = x.reshape(-1, x.shape[-1])
            if not torch.isfinite(flat.half()).all():
                raise UserError(f"{_name(key)} has activations beyond float16's range (|x| > 65504); "
                                "this site cannot be cached in float16")
            arrays[key][first * per: first * per + len(flat)] = flat.numpy().astype(np.float16)

    try:
        capture(lm, keys, windows, batch_size, sink, progress)
        for a in arrays.values():
            a.flush()
        np.save(tmp / TOKENS, windows.numpy().astype(np.int32))
        meta = dict(model=lm.name, model_revision=lm.revision, sites=[_name(k) for k in keys], text=text_name,
                    context=context, n_windows=len(windows), n_tokens=n_rows,
                    dims={_name(k): int(a.shape[1]) for k, a in arrays.items()}, dtype="float16")
        (tmp / META).write_text(json.dumps(meta, indent=1))
        arrays.clear()
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        arrays.clear()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ActivationCache(path, meta)


def _name(key: tuple[int, str]) -> str:
    return f"blocks.{key[0]}.{key[1]}"


def shuffled_batches(data: np.ndarray, batch_size: int, buffer_tokens: int = 32768, chunk: int = 1024,
                     seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless ``[batch_size, d]`` float32 batches from a ``[rows, d]`` array (a memory map), shuffled through a
    bounded buffer: each pass visits chunks of ``chunk`` consecutive rows in a random order, loads
    ``buffer_tokens`` rows at a time, shuffles them and yields them in batches. Every row is used once per pass.
    """
    n = len(data)
    if n < batch_size:
        raise UserError(f"the activation cache has {n} tokens, fewer than one batch of {batch_size}; "
                        "record more text (--cache-tokens) or lower --batch-size")
    rng = np.random.default_rng(seed)
    starts = np.arange(0, n, chunk)
    per_fill = max(1, buffer_tokens // chunk)
    carry = torch.empty(0, data.shape[1])
    while True:
        order = rng.permutation(starts)
        for i in range(0, len(order), per_fill):
            rows = [data[s: s + chunk] for s in np.sort(order[i: i + per_fill])]
            buf = torch.from_numpy(np.concatenate(rows).astype(np.float32))
            buf = torch.cat([carry, buf[torch.from_numpy(rng.permutation(len(buf)))]])
            full = len(buf) // batch_size * batch_size
            yield from buf[:full].split(batch_size)
            carry = buf[full:]

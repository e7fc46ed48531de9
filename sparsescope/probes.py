"""Prompt suites (ID and OOD) from `probes/`, held-out corpora from `data/`, and corruption ladders.

A suite is a named set of prompts with one split: "id", "ood", or a ladder level such as "shuffle@25".
Bundled families are `probes/<name>.yaml`: hand-written ones list their prompts; generated ones are a spec
(`generator: ...`) expanded at load time, deterministically from the spec's seed and the caller's seed.
A corruption ladder turns clean texts into one suite per level (0 = clean, 100 = fully corrupted), so
"sparsity vs distance from the training distribution" is measured as a curve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import numbers
import re
import string
import warnings
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from sparsescope.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROBES_DIR = ROOT / "probes"
DATA_DIR = ROOT / "data"

DEFAULT_SUITES: tuple[str, ...] = (
    "prose", "chat", "code",  # in-distribution
    "multilingual", "random_tokens", "shuffled_words", "base64_hex", "char_noise",  # out-of-distribution
    "tabular_logs", "latex_math", "rare_scripts", "systems_code", "manual_prose",  # independent of the ID texts
)
TASKS: dict[str, tuple[int, ...]] = {"addition": (1, 2, 3, 4, 5, 6), "list_ops": (1, 2, 3, 4, 5)}  # difficulty levels
TEXTS: tuple[str, ...] = ("heldout", "calibration", "train")
CORRUPTIONS: tuple[str, ...] = ("shuffle", "replace", "char_noise", "base64")
LEVELS: tuple[int, ...] = (0, 10, 25, 50, 100)
SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".jsonl", ".txt")
PRINTABLE = string.ascii_letters + string.digits + string.punctuation


@dataclass
class Prompt:
    id: str
    text: str
    suite: str
    split: str
    level: int = 0
    source: str = ""  # `<suite>/<id>` of the clean text this prompt was derived from ("" = none): the bootstrap unit
    answer: str = ""  # the expected continuation of a difficulty-ladder prompt ("" = not a task)


@dataclass
class Suite:
    name: str
    split: str
    prompts: list[Prompt]
    source: str
    license: str
    level: int = 0
    family: str = ""

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


# ---------------------------------------------------------------------------------------------- loading

def load_suites(names: Sequence[str] | None = None, tokenizer=None, seed: int = 0) -> list[Suite]:
    """Load suites by bundled name (see DEFAULT_SUITES), `ladder:<corruption>[:<suite>]` (a ladder over
    the prose suite by default) or path to a .yaml/.yml/.jsonl/.txt file (txt: one prompt per line).

    `tokenizer` is needed by generated token-level suites and applies the chat template to `chat`;
    `seed` varies every generated suite and ladder reproducibly."""
    names = [names] if isinstance(names, str) else DEFAULT_SUITES if names is None else names
    suites: list[Suite] = []
    for name in map(str, names):
        if name.startswith("difficulty:"):
            suites += difficulty(name.partition(":")[2], seed=seed)
        elif name.startswith("ladder:"):
            _, corruption, *source = name.split(":", 2)
            clean = _load(source[0] if source else "prose", tokenizer, seed)
            suites += ladder(clean, corruption, seed=seed, tokenizer=tokenizer)
        else:
            suites.append(_load(name, tokenizer, seed))
    return suites


def unique_suites(suites: Sequence[Suite]) -> list[Suite]:
    """Check that every suite has its own (name, split), the label of its rows and its resumable part in a run.

    The same suite listed twice is kept once, with a warning. Two different suites under one (name, split) are
    refused: recording both would store one under the other's label or overwrite it, and renaming either behind
    the user's back would make its rows hard to find (and differ between runs), so the user picks the name.
    """
    kept: dict[tuple[str, str], Suite] = {}
    for s in suites:
        first = kept.setdefault((s.name, s.split), s)
        if first is s:
            continue
        if first.texts == s.texts and first.source == s.source:
            warnings.warn(f"suite {s.name!r} (split {s.split!r}) is listed twice; recording it once", stacklevel=2)
            continue
        raise UserError(f"two different suites are named {s.name!r} with split {s.split!r} ({first.source} and "
                        f"{s.source}), so one would overwrite the other; rename one (a .txt/.jsonl suite is named "
                        "after its file, a YAML suite by its 'name:')")
    return list(kept.values())


def as_suites(prompts: object) -> list[Suite]:
    """What a caller passes as prompts, as suites: one prompt string, a list of strings (one suite named
    "prompts"), a Suite, or a list of Suites. Anything else (None, numbers, an empty list) is refused."""
    if isinstance(prompts, (str, Suite)):
        prompts = [prompts]
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, dict)):
        raise UserError(f"prompts must be a string, a list of strings or of Suites, got a {type(prompts).__name__}; "
                        "pass e.g. ['The cat sat on the mat.']")
    items = list(prompts)
    if not items:
        raise UserError("no prompts given; pass a prompt string, a list of them or suites (probes.load_suites())")
    if all(isinstance(p, Suite) for p in items):
        return items
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise UserError(f"prompt {i} is a {type(p).__name__} ({p!r:.40}); every prompt must be a string "
                            "(or pass only Suites)")
        if not p.strip():
            raise UserError(f"prompt {i} is empty; drop empty prompts")
    return [Suite("prompts", "id", [Prompt(f"p{i}", t, "prompts", "id") for i, t in enumerate(items)],
                  source="user", license="user")]


def load_text(name_or_path: str) -> str:
    """A bundled corpus from data/ ("heldout": perplexity text, "calibration": threshold fitting, "train": SAE
    training text) or a UTF-8 text file."""
    if name_or_path in TEXTS:
        return _read(_bundled(DATA_DIR) / f"{name_or_path}.txt")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise UserError(f"text file not found: {path}; pass {' or '.join(map(repr, TEXTS))} "
                        f"or a path to a UTF-8 text file")
    return _read(path)


def _bundled(folder: Path) -> Path:
    if not folder.is_dir():
        raise UserError(f"bundled folder {folder} is missing (sparsescope looks for it next to the package); "
                        f"install from a source checkout with `pip install -e <repo>` or pass files by path")
    return folder


def _load(name: str, tokenizer, seed: int, base: Path | None = None) -> Suite:
    path = _resolve(name, base)
    return _build(_spec(path), path, tokenizer, seed)


def _resolve(name: str, base: Path | None) -> Path:
    if name in DEFAULT_SUITES:
        return _bundled(PROBES_DIR) / f"{name}.yaml"
    path = Path(name).expanduser()
    if path.suffix.lower() not in SUFFIXES and "/" not in name and not path.exists():
        raise UserError(f"unknown suite {name!r}; available: {', '.join(DEFAULT_SUITES)}, "
                        f"ladder:<{'|'.join(CORRUPTIONS)}>, or a path to a .yaml/.yml/.jsonl/.txt file")
    if base is not None and not path.is_absolute() and (base / path).exists():
        path = base / path
    if not path.is_file():
        raise UserError(f"suite file not found: {path}; check the path")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: unsupported suite file type {path.suffix!r}; use .yaml, .yml, .jsonl or .txt")
    return path


def _read(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"file not found: {path}; check the path") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 (bad byte at offset {e.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise UserError(f"{path} is empty; add prompts or text to it")
    return text


def _spec(path: Path) -> dict[str, Any]:
    """The file as a suite spec: a mapping with prompts (or a generator), name, split, source, license."""
    text, suffix = _read(path), path.suffix.lower()
    user = {"name": path.stem, "split": "id", "source": str(path), "license": "user-provided"}
    if suffix == ".txt":
        return {**user, "prompts": text.splitlines()}
    if suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {n}: not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise UserError(f"{path}, line {n}: expected an object with a \"text\" field, "
                                f"like {{\"id\": \"a\", \"text\": \"...\"}}")
            prompts.append(obj)
        return {**user, "prompts": prompts}
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise UserError(f"{path} is not valid YAML ({problem}{where}); fix the syntax") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: expected a YAML mapping with 'prompts:' (or 'generator:'), got {type(spec).__name__}")
    return {**user, "license": "unspecified", **spec}


def _build(spec: dict[str, Any], path: Path, tokenizer, seed: int) -> Suite:
    name, split = str(spec["name"]), str(spec["split"])
    source = str(spec["source"])
    if "generator" in spec:
        items = _generate(spec, path, tokenizer, seed)
    else:
        prompts = spec.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise UserError(f"{path}: suite {name!r} has no prompts; "
                            f"add a non-empty 'prompts:' list (or a 'generator:')")
        items = [(*_item(p, i, name, path), "") for i, p in enumerate(prompts)]
    kept = [(pid, text, src) for pid, text, src in items if text.strip()]
    if not kept:
        raise UserError(f"{path}: all {len(items)} prompts of suite {name!r} are empty; add text to them")
    if len(kept) < len(items):
        warnings.warn(f"{path}: dropped {len(items) - len(kept)} empty prompt(s) from suite {name!r}", stacklevel=3)
    dups = sorted(pid for pid, n in Counter(pid for pid, _, _ in kept).items() if n > 1)
    if dups:
        raise UserError(f"{path}: duplicate prompt ids {dups[:5]}; give every prompt a unique id")
    if spec.get("chat_template") and getattr(tokenizer, "chat_template", None):
        kept = [(pid, _chat(tokenizer, text), src) for pid, text, src in kept]
        source += " (each prompt wrapped in the tokenizer's chat template)"
    return Suite(name, split, [Prompt(pid, text, name, split, source=src) for pid, text, src in kept], source,
                 str(spec["license"]), family=str(spec.get("family", name)))


def _item(p: Any, i: int, name: str, path: Path) -> tuple[str, str]:
    default = f"{name}-{i:03d}"
    if p is None or isinstance(p, str):
        return default, p or ""
    if isinstance(p, dict) and isinstance(p.get("text", ""), str | None):
        return str(p.get("id", default)), p.get("text") or ""
    raise UserError(f"{path}: prompt {i} must be a string or a mapping with a string 'text'; fix that entry")


def _chat(tokenizer, text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------------- generators

def _gen_random_tokens(text, i, rng, spec, path, tokenizer) -> str:
    """`length` uniform random vocabulary ids (special tokens excluded), decoded; re-tokenizing the text
    may give a slightly different count."""
    ids = rng.choice(_vocab(tokenizer), size=_param(spec, "length", path, 48))
    return tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)


def _gen_shuffled_words(text, i, rng, spec, path, tokenizer) -> str:
    return _corrupt(text, "shuffle", 1, rng, None)


def _gen_base64_hex(text, i, rng, spec, path, tokenizer) -> str:
    """The text cut at a word boundary to at most `max_chars`, as base64 (even i) or hex (odd i)."""
    limit = _param(spec, "max_chars", path, 60)
    cut = text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] or text[:limit]
    raw = cut.encode("utf-8")
    return raw.hex() if i % 2 else base64.b64encode(raw).decode("ascii")


def _gen_char_noise(text, i, rng, spec, path, tokenizer) -> str:
    """round(substitute·n) of the n non-space characters replaced, then round(insert·n) inserted."""
    n = sum(not c.isspace() for c in text)
    text = _corrupt(text, "char_noise", _param(spec, "substitute", path, 0.1, fraction=True), rng, None)
    chars = list(text)
    for _ in range(round(_param(spec, "insert", path, 0.03, fraction=True) * n)):
        chars.insert(int(rng.integers(len(chars) + 1)), PRINTABLE[rng.integers(len(PRINTABLE))])
    return "".join(chars)


GENERATORS = {
    "random_tokens": _gen_random_tokens,
    "shuffled_words": _gen_shuffled_words,
    "base64_hex": _gen_base64_hex,
    "char_noise": _gen_char_noise,
}


def _generate(spec: dict[str, Any], path: Path, tokenizer, seed: int) -> list[tuple[str, str, str]]:
    """(id, text, source) per generated prompt; source names the clean prompt a derived one comes from."""
    name, gen = str(spec["name"]), spec["generator"]
    if gen not in GENERATORS:
        raise UserError(f"{path}: unknown generator {gen!r}; valid: {', '.join(GENERATORS)}")
    n, spec_seed = _param(spec, "n", path), _param(spec, "seed", path, 0, low=0)
    if gen == "random_tokens":
        if tokenizer is None:
            raise UserError(f"suite {name!r} is generated from a tokenizer's vocabulary; pass tokenizer= "
                            f"(the model's tokenizer) or leave {name!r} out of the suites")
        texts, sources = [None] * n, [""] * n
    else:
        if "source_suite" not in spec:
            raise UserError(f"{path}: generator {gen!r} needs 'source_suite:' (a suite name or path) to corrupt")
        clean = _load(str(spec["source_suite"]), tokenizer, seed, base=path.parent)
        picked = [clean.prompts[i % len(clean.prompts)] for i in range(n)]
        texts, sources = [p.text for p in picked], [p.source or f"{clean.name}/{p.id}" for p in picked]
    fn = GENERATORS[gen]
    return [(f"{name}-{i:03d}", fn(t, i, _rng(name, spec_seed, seed, i), spec, path, tokenizer), src)
            for i, (t, src) in enumerate(zip(texts, sources))]


def _param(spec: dict[str, Any], key: str, path: Path, default: Any = None, *, fraction: bool = False, low: int = 1):
    value = spec.get(key, default)
    if value is None:
        raise UserError(f"{path}: generator {spec['generator']!r} needs '{key}:'; add it to the spec")
    if fraction:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise UserError(f"{path}: '{key}' must be a fraction in [0, 1], got {value!r}; fix the spec")
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise UserError(f"{path}: '{key}' must be an integer >= {low}, got {value!r}; fix the spec")
    return value


# ------------------------------------------------------------------------------------ difficulty ladders

LIST_OPS = {
    "reverse it": lambda xs: xs[::-1],
    "sort it": sorted,
    "drop the first number": lambda xs: xs[1:],
    "add 1 to each number": lambda xs: [x + 1 for x in xs],
    "double each number": lambda xs: [2 * x for x in xs],
    "drop the last number": lambda xs: xs[:-1],
}


def _addition_item(level: int, rng: np.random.Generator) -> tuple[str, str]:
    lo, hi = (1, 10) if level == 1 else (10 ** (level - 1), 10**level)
    a, b = (int(v) for v in rng.integers(lo, hi, size=2))
    return f"{a} + {b} =", f" {a + b}"


def _list_item(level: int, rng: np.random.Generator) -> tuple[str, str]:
    xs = [int(v) for v in rng.integers(1, 10, size=6)]
    steps = [list(LIST_OPS)[int(i)] for i in rng.integers(len(LIST_OPS), size=level)]
    out = xs
    for step in steps:
        out = LIST_OPS[step](out)
    return f"List: {xs}\nSteps: {', then '.join(steps)}\nResult:", f" {out}"


TASK_ITEMS = {"addition": _addition_item, "list_ops": _list_item}
SHOTS = {"addition": 6, "list_ops": 3}  # worked examples before each question: enough for a 32-token window


def difficulty(task: str, levels: Sequence[int] | None = None, n: int = 20, seed: int = 0) -> list[Suite]:
    """One suite per difficulty level of a task whose answer the model's greedy output shows.

    addition: level d = two d-digit operands ("a + b =", answer " a+b"); list_ops: level k = k list operations
    (reverse, sort, drop first/last, add 1, double) applied in turn to 6 digits. Each prompt is SHOTS[task] solved
    examples of the same level, then the question; `Prompt.answer` holds the expected continuation. Suites are
    named `difficulty:<task>` with split `<task>@<level>`; every prompt draws from its own seeded generator.
    Accuracy per level: `sparsescope.record.accuracy`.
    """
    if task not in TASK_ITEMS:
        raise UserError(f"unknown difficulty task {task!r}; choose from {', '.join(TASK_ITEMS)}")
    levels = list(TASKS[task] if levels is None else levels)
    if not levels or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in levels):
        raise UserError(f"difficulty levels {levels} must be whole numbers ≥ 1, e.g. {TASKS[task]}")
    name, sep = f"difficulty:{task}", "\n" if task == "addition" else "\n\n"
    suites = []
    for level in levels:
        split, prompts = f"{task}@{level}", []
        for i in range(n):
            rng = _rng("difficulty", task, seed, level, i)
            shots = ["".join(TASK_ITEMS[task](level, rng)) for _ in range(SHOTS[task])]
            question, answer = TASK_ITEMS[task](level, rng)
            prompts.append(Prompt(f"{task}-{i:03d}@{level}", sep.join([*shots, question]), name, split, level,
                                  answer=answer))
        source = f"Generated by sparsescope ({task}, level {level}, seed {seed})"
        suites.append(Suite(name, split, prompts, source, "CC0-1.0", level=level, family="difficulty"))
    return suites


# --------------------------------------------------------------------------------------------- ladders

def ladder(texts: Sequence[str] | Suite, corruption: str, levels: Sequence[int] = LEVELS, seed: int = 0,
           tokenizer=None) -> list[Suite]:
    """One suite per level: each clean text with round(level/100 · n) of its n units corrupted.

    Units and corruptions:
      - shuffle: tokens (words if no tokenizer); the chosen units are permuted so that none keeps its
        position and, whenever no value fills more than half the chosen positions, every chosen position
        shows a different unit. One unit cannot move alone, so k = 1 becomes 2 (nothing moves if n = 1).
      - replace: tokens (needs a tokenizer), each replaced by a different uniform random vocabulary token
        (special tokens excluded).
      - char_noise: non-whitespace characters, each replaced by a different random printable ASCII character.
      - base64: words (whitespace-separated), each replaced by the base64 of its UTF-8 bytes. Partial levels
        are meaningful: they mix readable words with encoded ones, so the script shift grows gradually.
    Token-level results are `tokenizer.decode(ids)` (exact outside the changed tokens for byte-level BPE);
    whitespace between words is kept as is. Level 0 is the clean text itself. Rounding is Python's
    round (half to even) on the exact value level·n/100. Every text and level draws from its own
    numpy generator seeded by sha256(seed, text index, corruption, level), so results are reproducible.
    The suites are named `ladder:<corruption>` with split `<corruption>@<level>`; prompt ids are
    `<clean id>@<level>`, so prompts pair up across levels (see `stats.trend_table`).
    """
    clean, levels = _ladder_args(texts, corruption, levels, tokenizer)
    name, unit = f"ladder:{corruption}", _unit(corruption, tokenizer)
    suites = []
    for level in levels:
        split = f"{corruption}@{level}"
        rngs = [_rng("ladder", seed, i, corruption, level) for i in range(len(clean.prompts))]
        prompts = [Prompt(f"{p.id}@{level}", _corrupt(p.text, corruption, Fraction(level, 100), rng, tokenizer), name,
                          split, level, source=p.source or f"{clean.name}/{p.id}")
                   for p, rng in zip(clean.prompts, rngs)]
        source = f"{clean.name} ({clean.source}); {corruption} on {level}% of {unit}s, seed {seed}"
        suites.append(Suite(name, split, prompts, source, clean.license, level=level, family="ladder"))
    return suites


def ladder_spec(texts: Sequence[str] | Suite, corruption: str, levels: Sequence[int] = LEVELS, seed: int = 0,
                tokenizer=None) -> dict[str, Any]:
    """What a run manifest needs to rebuild `ladder(...)` with these arguments and check its inputs."""
    clean, levels = _ladder_args(texts, corruption, levels, tokenizer)
    return {
        "corruption": corruption,
        "levels": levels,
        "seed": seed,
        "unit": _unit(corruption, tokenizer),
        "source_suite": clean.name,
        "n_texts": len(clean.prompts),
        "texts_sha256": hashlib.sha256(json.dumps(clean.texts, ensure_ascii=False).encode()).hexdigest(),
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__) if tokenizer is not None else None,
    }


def corrupt(text: str, corruption: str, fraction: float, seed: int = 0, tokenizer=None) -> str:
    """Corrupt round(fraction · n) of the text's n units (units and rules as in `ladder`)."""
    return _corrupt(text, corruption, fraction, np.random.default_rng(seed), tokenizer)


def _ladder_args(texts, corruption: str, levels: Sequence[int], tokenizer) -> tuple[Suite, list[int]]:
    _check_corruption(corruption, tokenizer)
    if isinstance(texts, Suite):
        clean = texts
    else:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise UserError("no texts to build a ladder from; pass a non-empty list of texts or a Suite")
        prompts = [Prompt(f"text-{i:03d}", t, "texts", "id") for i, t in enumerate(texts)]
        clean = Suite("texts", "id", prompts, "user texts", "user-provided")
    for i, p in enumerate(clean.prompts):
        if not isinstance(p.text, str) or not p.text.strip():
            raise UserError(f"text {i} ({p.id}) is empty; drop empty texts before building a ladder")
    levels = list(levels)
    if not levels:
        raise UserError("no ladder levels; pass percentages in [0, 100], e.g. (0, 10, 25, 50, 100)")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, numbers.Integral):
            raise UserError(f"ladder level {level!r} is not a whole percentage; pass integers in [0, 100]")
        if not 0 <= level <= 100:
            raise UserError(f"ladder level {level} is outside [0, 100]; levels are percentages of units corrupted")
    if len(set(levels)) < len(levels):
        raise UserError(f"ladder levels {levels} repeat; give each level once")
    return clean, [int(level) for level in levels]


def _check_corruption(corruption: str, tokenizer) -> None:
    if corruption not in CORRUPTIONS:
        raise UserError(f"unknown corruption {corruption!r}; valid: {', '.join(CORRUPTIONS)}")
    if corruption == "replace" and tokenizer is None:
        raise UserError("corruption 'replace' draws random vocabulary tokens; pass tokenizer= (the model's tokenizer)")


def _unit(corruption: str, tokenizer) -> str:
    if corruption == "char_noise":
        return "non-space character"
    return "token" if corruption in ("shuffle", "replace") and tokenizer is not None else "word"


def _corrupt(text: str, corruption: str, fraction: float | Fraction, rng: np.random.Generator, tokenizer) -> str:
    _check_corruption(corruption, tokenizer)
    if not isinstance(text, str) or not text.strip():
        raise UserError("cannot corrupt an empty text; drop empty texts first")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
        raise UserError(f"fraction {fraction!r} is outside [0, 1]; "
                        f"pass the share of units to corrupt (level 25 = 0.25)")
    if corruption == "char_noise":
        chars = list(text)
        positions = [i for i, c in enumerate(chars) if not c.isspace()]
        for j in _choose(len(positions), fraction, rng):
            chars[positions[j]] = _other_char(chars[positions[j]], rng)
        return "".join(chars)
    if _unit(corruption, tokenizer) == "token":
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if corruption == "shuffle":
            new = _shuffle(ids, fraction, rng)
        else:
            new = _replace(ids, fraction, rng, _vocab(tokenizer))
        return text if new == ids else tokenizer.decode(new, clean_up_tokenization_spaces=False)
    parts = re.split(r"(\s+)", text)  # words at even indices, whitespace runs at odd ones
    at = [i for i, p in enumerate(parts) if p and not p.isspace()]
    words = [parts[i] for i in at]
    if corruption == "shuffle":
        words = _shuffle(words, fraction, rng)
    else:
        for j in _choose(len(words), fraction, rng):
            words[j] = base64.b64encode(words[j].encode("utf-8")).decode("ascii")
    for i, w in zip(at, words):
        parts[i] = w
    return "".join(parts)


def _other_char(old: str, rng: np.random.Generator) -> str:
    """A uniform random printable ASCII character other than `old`."""
    at = PRINTABLE.find(old)
    r = int(rng.integers(len(PRINTABLE) - (at >= 0)))
    return PRINTABLE[r + (0 <= at <= r)]


def _choose(n: int, fraction: float | Fraction, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=round(fraction * n), replace=False)


def _shuffle(units: list, fraction: float | Fraction, rng: np.random.Generator) -> list:
    """Move round(fraction·n) units (at least 2 when any): group the chosen units by value, groups in
    random order, and rotate by the largest group's size, so no chosen position keeps its unit and, when
    that group is at most half of the chosen ones, none receives an equal unit."""
    n = len(units)
    k = round(fraction * n)
    k = 0 if n < 2 else max(k, 2) if k else 0
    if not k:
        return list(units)
    chosen = rng.choice(n, size=k, replace=False)  # random order
    first: dict = {}
    group = [first.setdefault(units[p], len(first)) for p in chosen]
    chosen = chosen[np.argsort(group, kind="stable")]
    largest = max(Counter(group).values())
    shift = largest if largest < k else 1
    out = list(units)
    for i, p in enumerate(chosen):
        out[p] = units[chosen[(i + shift) % k]]
    return out


def _replace(ids: list[int], fraction: float | Fraction, rng: np.random.Generator, vocab: np.ndarray) -> list[int]:
    out = list(ids)
    for p in _choose(len(ids), fraction, rng):
        new = out[p]
        while new == out[p]:
            new = int(vocab[rng.integers(len(vocab))])
        out[p] = new
    return out


def _vocab(tokenizer) -> np.ndarray:
    vocab = np.setdiff1d(np.arange(len(tokenizer)), tokenizer.all_special_ids)
    if len(vocab) < 2:
        raise UserError("the tokenizer has fewer than 2 non-special tokens; random tokens need a real vocabulary")
    return vocab


def _rng(*key: Any) -> np.random.Generator:
    """A generator seeded by sha256 of the key (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))

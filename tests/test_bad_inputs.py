"""Every bad input in tests/data/bad_inputs.yaml is refused with one line, no traceback, and nothing written or lost.

CLI entries run through typer's CliRunner; API entries call a `sparsescope.` function and expect a UserError.
Entries with `each_command_with` expand over every command that has that option, so new commands inherit them.
"""

import hashlib
import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from sparsescope.cli import app
from sparsescope.cli._common import friendly
from sparsescope.errors import UserError

TABLE = Path(__file__).parent / "data" / "bad_inputs.yaml"
ENTRIES = yaml.safe_load(TABLE.read_text(encoding="utf-8"))


def _commands_with(option: str) -> list[str]:
    """Commands that take ``option`` (including the ones click adds, such as --help)."""
    commands = get_command(app).commands.items()
    return sorted(name for name, cmd in commands
                  if any(option in p.opts for p in cmd.get_params(cmd.context_class(cmd, info_name=name))))


def _cases() -> list:
    cases = []
    for entry in ENTRIES:
        if "each_command_with" in entry:
            for name in _commands_with(entry["each_command_with"]):
                cases.append(pytest.param({**entry, "cli": [name, *entry["args"]]}, id=f"{entry['id']}[{name}]"))
        else:
            cases.append(pytest.param(entry, id=entry["id"]))
    return cases


CASES = _cases()


# -- placeholders built on demand ------------------------------------------------------------------------------
def _truncated_model(model_dir: Path, tmp: Path) -> Path:
    path = tmp / "truncated_model"
    shutil.copytree(model_dir, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


def _no_tokenizer_model(model_dir: Path, tmp: Path) -> Path:
    path = tmp / "no_tokenizer_model"
    shutil.copytree(model_dir, path, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    return path


def _damaged_runs(model_dir: Path, tmp: Path) -> Path:
    run = tmp / "damaged_runs" / "bad"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_id": "bad", "kind": "scan", "status": "complete",
                                                   "tables": ["activations"], "parts_done": {}, "config": "x"}))
    return run.parent


BUILDERS = {"truncated_model": _truncated_model, "no_tokenizer_model": _no_tokenizer_model,
            "damaged_runs": _damaged_runs}


def _fill(value, names: dict, objects: dict):
    if isinstance(value, str):
        return objects[value] if value in objects else value.format(**names)
    if isinstance(value, list):
        return [_fill(v, names, objects) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names, objects) for k, v in value.items()}
    return value


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _resolve(dotted: str):
    """``sparsescope.a.b`` → what ``from sparsescope.a import b`` gives (importing modules on the way)."""
    first, *rest = dotted.split(".")
    assert first == "sparsescope", dotted
    obj, path = importlib.import_module(first), first
    for name in rest:
        path += f".{name}"
        obj = getattr(obj, name) if hasattr(obj, name) else importlib.import_module(path)
    return obj


@pytest.fixture(scope="module")
def lm():
    from tiny import tiny_model

    return tiny_model("llama")


def test_the_table_is_well_formed():
    ids = [e["id"] for e in ENTRIES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for e in ENTRIES:
        assert ("cli" in e) + ("api" in e) + ("each_command_with" in e) == 1, e["id"]
        assert e.get("message"), e["id"]
    for e in ENTRIES:  # an option no command has would expand to no test at all
        assert "each_command_with" not in e or _commands_with(e["each_command_with"]), e["id"]
    assert len(_commands_with("--help")) == len(get_command(app).commands)


@pytest.mark.parametrize("command", app.registered_commands, ids=lambda c: c.callback.__name__)
def test_every_command_reports_failures_through_friendly(command):
    """friendly() turns every failure into one line (and marks unfinished runs); a new command must use it too."""
    assert command.callback.__code__ is friendly(print).__code__, f"{command.callback.__name__} lacks @friendly"


@pytest.mark.parametrize("entry", CASES)
def test_bad_input_is_refused_in_one_line(entry, model_dir, tmp_path, monkeypatch, lm):
    tmp = tmp_path / "tmp"
    (tmp / "runs").mkdir(parents=True)
    for rel, text in (entry.get("files") or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text, encoding="utf-8")
    text = json.dumps(entry)
    names = {"model": str(model_dir), "runs": str(tmp / "runs"), "tmp": str(tmp)}
    names |= {k: str(build(model_dir, tmp)) for k, build in BUILDERS.items() if "{" + k + "}" in text}
    before = _snapshot(tmp)
    if "api" in entry:
        fn = _resolve(entry["api"])
        objects = {"{lm}": lm, "{lm.model}": lm.model}
        with pytest.raises(UserError) as err:
            result = fn(*_fill(entry.get("args", []), names, objects), **_fill(entry.get("kwargs", {}), names, objects))
            if "method" in entry:
                getattr(result, entry["method"])()
        message = str(err.value)
        assert "\n" not in message.strip(), message
        assert entry["message"] in message, message
    else:
        for key, value in (entry.get("env") or {}).items():
            monkeypatch.setenv(key, value.format(**names))
        res = CliRunner().invoke(app, _fill(entry["cli"], names, {}))
        assert res.exit_code == entry["exit"], res.output
        assert "Traceback" not in res.output, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.output
        assert entry["message"] in errors[0], res.output
    assert _snapshot(tmp) == before, "a refused input changed or wrote files"

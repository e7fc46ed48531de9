"""The package layout: no module imports one from a higher layer (docs/architecture.md), and CLI commands stay thin."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sparsescope"

# lowest first; a module may import its own layer or lower ones (docs/architecture.md, "Layers")
LAYERS = [
    ["errors"],
    ["models", "probes", "store"],
    ["record", "eval", "intervene", "cost", "kernels.build", "kernels.stats"],  # record's own fused kernel
    ["levers"],
    ["stats", "ood", "spiking", "weights", "kernels", "sae", "circuits"],
    ["harvest"],
    ["show"],
    ["workflows", "bench"],
    ["cli", "apps", "__init__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MODULES = sorted(p for p in ROOT.rglob("*.py"))


def layer_of(parts: list[str]) -> int:
    """Layer of `sparsescope.<parts>`: its top-level subpackage or module (`__init__` = the package root)."""
    top = parts[0] if parts else "__init__"
    if ".".join(parts[:2]) in LAYER:  # a module placed below its package (the recorder's statistics kernel)
        return LAYER[".".join(parts[:2])]
    assert top in LAYER, f"sparsescope.{top} has no layer: add it to LAYERS here and to docs/architecture.md"
    return LAYER[top]


def imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted parts below `sparsescope`) of every sparsescope import in the file, function-level ones too."""
    package = list(path.relative_to(ROOT.parent).with_suffix("").parts)[:-1]  # e.g. ["sparsescope", "store"]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "sparsescope"]
        elif isinstance(node, ast.ImportFrom):
            base = (package[: len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
            base = [b for b in base if b]
            if base[:1] != ["sparsescope"]:
                continue
            if len(base) == 1:  # `from sparsescope import x`: x is a subpackage (or the version string)
                out += [(node.lineno, [a.name]) for a in node.names if a.name != "__version__"]
            else:
                out.append((node.lineno, base[1:]))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer(path):
    own = list(path.relative_to(ROOT).with_suffix("").parts)
    mine = layer_of(own)
    for line, parts in imports(path):
        theirs = layer_of(parts)
        assert theirs <= mine, (f"{path.relative_to(ROOT)}:{line} imports sparsescope.{'.'.join(parts)} "
                                f"(layer {theirs}) from layer {mine}")


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The test above would be vacuous if `imports` missed these forms."""
    found = {tuple(p) for _, p in imports(ROOT / "store" / "query.py")}
    assert ("errors",) in found and ("store", "store") in found  # `from ..errors`, `from .store`
    found = {tuple(p) for _, p in imports(ROOT / "cli" / "scan.py")}
    assert ("workflows",) in found  # inside a function
    assert layer_of(["show", "report"]) > layer_of(["harvest", "compare"]) > layer_of(["levers", "teal"])


def test_intervene_imports_no_lever():
    """The mechanism knows its registry, not its plugins: levers register themselves on import."""
    assert all(parts[0] in ("errors", "models") for _, parts in imports(ROOT / "intervene.py"))
    from sparsescope.intervene import LEVERS

    assert {"prune", "quant", "act_quant", "teal", "spike"} <= set(LEVERS)


def commands():
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list):
                yield path.stem, node


@pytest.mark.parametrize("module, node", list(commands()), ids=lambda x: getattr(x, "name", x))
def test_cli_commands_are_thin(module, node):
    """Parse, call one library function, print: the body after the docstring stays under 30 lines."""
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
        else node.body
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines < 30, f"cli/{module}.py: {node.name} has {lines} lines; move the work into a library function"

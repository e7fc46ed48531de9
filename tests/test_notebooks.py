"""The notebooks execute end to end (nbclient, a real kernel) on the tiny model with a small budget, so they never rot.

The committed copies carry the outputs of a run on the embedded SmolLM2 (`python tests/test_notebooks.py` re-runs
them in place with their own parameters)."""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = {  # per notebook: the parameters cell on the tiny model
    "quickstart.ipynb": 'MODEL = {model!r}\nSUITES = ["prose", "random_tokens"]\nSITES = ["mlp.hook_post"]\n'
                        'MAX_TOKENS = 16\nWINDOW = 8',
    "id_vs_ood.ipynb": 'MODEL = {model!r}\nRUNS = {runs!r}\nSUITES = "prose,random_tokens,multilingual"\n'
                       'SITES = "mlp.hook_post"\nMAX_TOKENS = 16\nWINDOW = 8',
    "harvest.ipynb": 'MODEL = {model!r}\nRUNS = {runs!r}\nEVAL_TOKENS = 32\nMAX_TOKENS = 16\nGROUP_SIZE = 16\n'
                     'BUDGET_PCT = 2.0\nWINDOW = 8',
}


def execute(nb, cwd: Path, timeout: int = 600):
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_on_the_tiny_model(name, model_dir, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = TINY[name].format(model=str(model_dir), runs=str(tmp_path / "runs"))
    execute(nb, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert shown, "every notebook draws at least one figure"


if __name__ == "__main__":  # re-execute the committed notebooks in place with their own parameters
    for path in sys.argv[1:] or sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.write(execute(nb, NOTEBOOKS, timeout=3600), path)
        print("executed", path)

"""The explorer in a real browser (Debian chromium via Playwright): `sparsescope app` as a subprocess on a free
port, every page visited through the sidebar, no Streamlit exception box, screenshots under artifacts/explorer/.

Timings are recorded next to the screenshots (timings.json), never asserted; the goals are measured with
`python benchmarks/explorer.py RUNS_DIR` on a store of real SmolLM2 scans.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import explorer as browser  # noqa: E402

ARTIFACTS = ROOT / "artifacts" / "explorer"
why = browser.chromium_missing()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


def check(result: dict, headings: dict[str, str]) -> None:
    assert not result["console_errors"], result["console_errors"]
    for page, errors in result["errors"].items():
        assert not errors, f"{page}: {errors}"
    for page, heading in headings.items():
        assert heading in result["headings"][page], (page, result["headings"][page])


def test_every_page_in_a_browser(explorer_store):
    runs, _ = explorer_store
    with browser.serve(runs) as url:
        result = browser.visit(url, ARTIFACTS)
    (ARTIFACTS / "timings.json").write_text(json.dumps({k: result[k] for k in ("first_paint_s", "switch_s")},
                                                       indent=2))
    check(result, {"Harvest": "Recommended plan under a quality budget", "Overview": "ID − OOD with 95 % CI",
                   "ID vs OOD": "Corruption ladders", "Spiking & head-to-head": "Head-to-head: quantization vs "
                   "activation sparsity vs spiking", "Neurons": "Dead and dense neurons"})
    assert all((ARTIFACTS / f"{p or 'harvest'}.png").stat().st_size > 10_000 for _, _, p in browser.PAGES)


def test_empty_store_in_a_browser(tmp_path):
    with browser.serve(tmp_path / "no-runs-yet") as url:
        result = browser.visit(url, ARTIFACTS / "empty")
    check(result, {})

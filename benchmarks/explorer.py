"""Drive the explorer in a real browser: start `sparsescope app`, visit every page, time it, screenshot it.

Used by tests/test_explorer_browser.py (any store) and as a benchmark on a store of real scans:

    python benchmarks/explorer.py RUNS_DIR [--out artifacts/explorer] [--repeats 5]

prints, as medians over repeats (each a fresh browser), the first meaningful paint of the landing page (navigation
start → its title, script done and first chart drawn), the same after a reload (scripts in the browser cache), and
every page switch (sidebar click → the new page's title, script done, first chart, all charts drawn; the next click
waits until the page has settled), with the machine's load average. Build a store of 10 real SmolLM2 scans with
benchmarks/explorer_scans.py.
Needs Debian's chromium (/usr/bin/chromium) and the playwright package (the [dev] extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("SPARSESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# (title as the page shows it, its navigation label, its url path)
PAGES = [("Harvest: where latent sparsity pays", "Harvest", ""), ("Overview", "Overview", "overview"),
         ("ID vs OOD", "ID vs OOD", "id_vs_ood"), ("Spiking & head-to-head", "Spiking & head-to-head", "spiking"),
         ("Neurons", "Neurons", "neurons"), ("SAE features", "SAE features", "sae"),
         ("Circuits", "Circuits", "circuits")]
EXCEPTION = '[data-testid="stException"]'


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        return f"chromium is not installed ({CHROMIUM}); .ci/run installs it with apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing; pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs: Path | str, port: int | None = None, timeout: float = 120):
    """`sparsescope app` as a subprocess on a free port; yields its URL, stops it afterwards."""
    port = port or free_port()
    exe = Path(sys.executable).with_name("sparsescope")
    cmd = [str(exe) if exe.exists() else "sparsescope", "app", "--runs", str(runs), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sparsescope app exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sparsescope app did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


ALL_DRAWN = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))
    && !document.querySelector('[data-testid="stSkeleton"]')"""


def _drawn(page, title: str, timeout_ms: float, start: float) -> dict:
    """Wait until the page's title is shown (its script has started), the script has finished, the first chart is
    drawn and then every chart; returns the seconds from `start` to each stage: title_s, script_s, chart_s (= the
    meaningful paint), all_s (the page settled: the next click is only made then)."""
    stages = {}
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=timeout_ms)
    stages["title_s"] = time.perf_counter() - start
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=timeout_ms)
    stages["script_s"] = time.perf_counter() - start
    if page.locator('[data-testid="stPlotlyChart"]').count():
        page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=timeout_ms)
    stages["chart_s"] = time.perf_counter() - start
    page.wait_for_function(ALL_DRAWN, timeout=timeout_ms, polling=50)
    stages["all_s"] = time.perf_counter() - start
    return stages


def visit(url: str, out: Path | str | None = None, timeout_ms: float = 60_000) -> dict:
    """Open the landing page, then click through every page in the sidebar.

    Returns {"first_paint_s", "first_stages": {title_s, script_s, chart_s, all_s}, "reload_stages" (the landing
    page opened again in the same browser, its scripts cached), "switch_s": {page: s},
    "switch_stages": {page: stages}, "errors": {page: [texts of exception boxes]}, "headings": {page: [h1-h3 texts]},
    "console_errors": [...]} and saves one full-page screenshot per page to `out`.
    """
    from playwright.sync_api import sync_playwright

    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    result = {"switch_s": {}, "switch_stages": {}, "errors": {}, "headings": {}, "console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                                    args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.on("pageerror", lambda e: result["console_errors"].append(str(e)))
        start = time.perf_counter()
        page.goto(url, wait_until="commit")
        result["first_stages"] = _drawn(page, PAGES[0][0], timeout_ms, start)
        result["first_paint_s"] = result["first_stages"]["chart_s"]
        for i, (title, nav, path) in enumerate(PAGES):
            if i:
                start = time.perf_counter()
                page.locator('[data-testid="stSidebarNav"]').get_by_text(nav, exact=True).click()
                result["switch_stages"][nav] = _drawn(page, title, timeout_ms, start)
                result["switch_s"][nav] = result["switch_stages"][nav]["chart_s"]
            result["errors"][nav] = page.locator(EXCEPTION).all_inner_texts()
            result["headings"][nav] = page.locator("h1, h2, h3").all_inner_texts()
            if out:  # tables and the lower charts finish drawing after the first meaningful paint
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')",
                                       timeout=timeout_ms)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / f"{path or 'harvest'}.png"), full_page=True)
        start = time.perf_counter()  # a returning visitor: the browser has the app's scripts cached
        page.goto(url, wait_until="commit")
        result["reload_stages"] = _drawn(page, PAGES[0][0], timeout_ms, start)
        browser.close()
    return result


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="save one screenshot per page of the first measured visit")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    why = chromium_missing()
    if why:
        sys.exit(why)
    visits = []
    with serve(a.runs) as url:
        cold = visit(url, None)  # the server's first visitor: its script runs read the store and fill the caches
        load = os.getloadavg()
        for i in range(a.repeats):
            r = visit(url, a.out if i == 0 else None)
            visits.append(r)
            bad = {k: v for k, v in r["errors"].items() if v}
            if bad or r["console_errors"]:
                print("page errors:", json.dumps(bad), r["console_errors"])
        load = [max(x, y) for x, y in zip(load, os.getloadavg())]
    n_runs = sum(1 for p in a.runs.iterdir() if p.is_dir()) if a.runs.is_dir() else 0
    print(f"runs: {a.runs} ({n_runs} run folders); {len(visits)} visits, each a fresh browser session; "
          f"load average (1/5/15 min, max of before/after) {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{os.cpu_count()} CPUs")
    print("medians in s; title = page heading shown, script = server script finished, chart = first chart drawn "
          "(the meaningful paint), all = every chart drawn")
    print(f"{'':34}{'title':>7}{'script':>8}{'chart':>8}{'all':>7}{'max chart':>11}")
    rows = [("first paint, first visitor (1 run)", [cold["first_stages"]]),
            ("first paint (Harvest), new browser", [v["first_stages"] for v in visits]),
            ("first paint (Harvest), reload", [v["reload_stages"] for v in visits])]
    rows += [(f"switch to {nav}", [v["switch_stages"][nav] for v in visits]) for _, nav, _ in PAGES[1:]]
    for name, stages in rows:
        print(f"{name:34}" + "".join(f"{_median([s[k] for s in stages]):>{w}}" for k, w in
                                     (("title_s", 7), ("script_s", 8), ("chart_s", 8), ("all_s", 7)))
              + f"{max(s['chart_s'] for s in stages):>11.2f}")


if __name__ == "__main__":
    main()

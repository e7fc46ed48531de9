"""Build the explorer benchmark's run store: N labelled copies of ONE real SmolLM2 scan (plus other runs as they are).

    python benchmarks/explorer_scans.py OUT [--source SCAN_RUN_DIR] [--copies 10] [--extra RUN_DIR ...]

Without --source it first records the scan the copies are made of (a real `sparsescope scan` of the embedded
SmolLM2-135M: prose, code, random_tokens, multilingual + a shuffle ladder, 64 tokens; a few minutes on 2 idle
cores) into OUT/../explorer-source. Each copy is the source run with a new run id (`...-copy03`), `run_id` rewritten
inside its tables and its manifest saying `benchmark_copy_of`: the explorer reads ten runs' worth of files, but the
numbers in them are one scan's. `--extra` copies other run folders unchanged (e.g. a spike, weights and compare
run, so the landing page prices the linears). Copies are seconds; OUT is replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

SCAN = ["scan", "--suites", "prose,code,random_tokens,multilingual", "--ladders", "shuffle", "--max-tokens", "64",
        "--no-report"]


def record_source(runs: Path) -> Path:
    """One real scan of the embedded model (with its statistics: effects, detector, ROC, ladder bands)."""
    exe = Path(sys.executable).with_name("sparsescope")
    subprocess.run([str(exe) if exe.exists() else "sparsescope", *SCAN, "--runs-dir", str(runs)], check=True)
    return max((p for p in runs.iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.name)


def copy_run(source: Path, out: Path, run_id: str, note: dict) -> None:
    """`source` as run `run_id` under `out`: tables with a run_id column get the new id, the manifest too."""
    dest = out / run_id
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("parts", "*.html"))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest |= {"run_id": run_id, **note}
    with duckdb.connect() as con:
        for table in manifest.get("tables", {}):
            path = dest / f"{table}.parquet"
            if "run_id" in con.execute(f"SELECT * FROM read_parquet('{path}') LIMIT 0").df().columns:
                tmp = path.with_suffix(".tmp")
                con.execute(f"COPY (SELECT * REPLACE ('{run_id}' AS run_id) FROM read_parquet('{path}')) "
                            f"TO '{tmp}' (FORMAT parquet)")
                tmp.replace(path)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, help="a complete scan run folder (default: record one)")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="run folders copied as they are")
    a = ap.parse_args()
    source = a.source or record_source(a.out.resolve().parent / "explorer-source")
    manifest = json.loads((source / "manifest.json").read_text())
    if manifest.get("kind") != "scan" or manifest.get("status") != "complete":
        sys.exit(f"{source} is not a complete scan run; pass one with --source")
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    for i in range(a.copies):
        copy_run(source, a.out, f"{source.name}-copy{i:02d}",
                 {"benchmark_copy_of": source.name, "created": f"{manifest.get('created', '')}+{i:02d}"})
    for extra in a.extra:
        shutil.copytree(extra, a.out / extra.name, ignore=shutil.ignore_patterns("parts"))
    print(f"{a.out}: {a.copies} copies of scan {source.name}" + (f" + {len(a.extra)} other runs" if a.extra else ""))


if __name__ == "__main__":
    main()

"""How many prompts of each bundled suite a matched window keeps, for several window sizes (the choice of W).

    PYTHONPATH=. .venv/bin/python benchmarks/window_coverage.py [MODEL] [--windows 16,24,32,48]

A prompt is kept when it has at least start + W tokens, start = 1 or the suite's shared prefix (chat template).
"""

from __future__ import annotations

import argparse
import warnings

from sparsescope.errors import UserError
from sparsescope.models import load_model
from sparsescope.probes import load_suites
from sparsescope.record import RecordConfig, Recorder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--windows", default="16,24,32,48")
    args = ap.parse_args()
    lm = load_model(args.model)
    windows = [int(w) for w in args.windows.split(",")]
    print("| suite | split | window start | " + " | ".join(f"kept at W={w}" for w in windows) + " |")
    print("|---" * (3 + len(windows)) + "|")
    for suite in load_suites(None, tokenizer=lm.tokenizer):
        cells, start = [], 1
        for w in windows:
            recorder = Recorder(lm, RecordConfig(window=w))
            ids = recorder.tokenize(suite.texts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    start, kept = recorder.window_plan(suite, ids)
                    cells.append(f"{len(kept)}/{len(ids)}")
                except UserError:  # a window longer than every prompt of the suite: none kept
                    cells.append(f"0/{len(ids)}")
        print(f"| {suite.name} | {suite.split} | {start} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

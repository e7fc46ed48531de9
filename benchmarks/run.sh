#!/usr/bin/env bash
# Every core benchmark in one run; the output is kept beside this script.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/sparsescope bench all "$@" 2>&1 | tee benchmarks/results.txt

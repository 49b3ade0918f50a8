#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh), then runs the linters, the test suite and the benchmark smoke run.
# CI runs exactly this (.ci/run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup_env.sh

ruff check .
ruff format --check .
python -m pytest tests
# The benchmarks once each on shrunk shapes: proves they run; timings come from a GPU (benchmarks/gpu_check.sh).
python -m pytest benchmarks --benchmark-disable -q

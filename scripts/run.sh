#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh), then runs the main job.
# Until the training entry point lands, this is a short demonstration of the fused ops.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup_env.sh
python examples/fused_ops_demo.py "$@"

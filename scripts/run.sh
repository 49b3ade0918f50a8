#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh), then runs the main job: python -m t2ifast.train (arguments are passed on;
# with none it trains GAN-INT-CLS on the built-in synthetic set and ends with sample grids in runs/t2ifast).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup_env.sh
python -m t2ifast.train "$@"

#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment in .venv and builds t2ifast into it with its
# compiled extension. Sourced by scripts/test.sh and scripts/run.sh; safe to run again.
#   T2IFAST_EXTRAS   pip extras to install (default: test,dali)
#   TORCH_SPEC       the torch to install (default: torch==2.14.1, the CUDA 13.0 build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.14.1}" "setuptools>=77" wheel ninja

# The extension is compiled against the torch above (hence no build isolation). With a CUDA build of
# torch and a CUDA toolkit it holds CUDA kernels; Hopper (9.0) only by default here to keep the build short.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
build_start=$(date +%s)
python -m pip install -q --no-build-isolation -e ".[${T2IFAST_EXTRAS:-test,dali}]"
echo "t2ifast built and installed in $(( $(date +%s) - build_start )) s"
python -m t2ifast.info

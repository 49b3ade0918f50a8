#!/usr/bin/env bash
# Everything a lent GPU session should do, in one call of the device tool:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
# or in phases, one call each, back to back while the machine stays warm (the build is kept between calls):
#   run(command="bash benchmarks/gpu_check.sh build tests sanitizer")
#   run(command="bash benchmarks/gpu_check.sh build bench")       # the build phase is a no-op once built
# Phases: build ceilings tests sanitizer bench (default: all, in that order).
# Builds the extension for the GPU there, prints the build report, measures the device's ceilings, runs
# the whole test suite (the CUDA tests included), runs compute-sanitizer (memcheck) on the CUDA tests,
# and runs the benchmarks. Logs and the benchmark JSON land in $OUT (the device tool brings them back).
# Uses the machine's own python3 (torch 2.11, Triton 3.6): no network there, nothing is downloaded.
set -uo pipefail
OUT="${OUT:-/tmp/t2ifast-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export T2IFAST_REQUIRE_EXT=1 T2IFAST_REQUIRE_CUDA_EXT=1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
PHASES="${*:-build ceilings tests sanitizer bench}"
wants() { [[ " $PHASES " == *" $1 "* ]]; }

if wants build; then
step "build"
start=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build took $(( $(date +%s) - start )) s"
python3 -m t2ifast.info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
fi

if wants ceilings; then
step "device ceilings"
python3 benchmarks/roofline.py | tee "$OUT/roofline.txt"
fi

if wants tests; then
step "tests (CUDA tests run here)"
python3 -m pytest tests -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
fi

if wants sanitizer; then
step "compute-sanitizer memcheck on the CUDA tests"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest tests -q -k "cuda" -p no:cacheprovider >"$OUT/sanitizer.log" 2>&1
echo "compute-sanitizer exit code $? (0 = clean; 9 = errors found)"
grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -3
fi

if wants bench; then
step "benchmarks"
python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name 2>&1 | tee "$OUT/bench.txt" | tail -60
python3 benchmarks/summarize.py "$OUT/bench.json" | tee "$OUT/summary.md"
fi

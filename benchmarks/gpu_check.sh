#!/usr/bin/env bash
# Everything a lent GPU session should do, in calls of the device tool:
#   run(command="bash benchmarks/gpu_check.sh build gpu-tests profile", timeout_s=600)
#   run(command="bash benchmarks/gpu_check.sh build sweep sanitizer", timeout_s=600)   # while still warm
#   run(command="bash benchmarks/gpu_check.sh build bench", timeout_s=600)
# Phases, in this order whatever order they are named in:
#   build      pip install -e . for this GPU (sm_90), then the build report (python -m t2ifast.info) and nvidia-smi
#   ceilings   the device's measured memory bandwidth and bf16 matmul rate (benchmarks/roofline.py)
#   gpu-tests  the tests that run on the GPU (their names end in _cuda): every CUDA and Triton kernel
#              against the reference, fp32 and bf16, opcheck and torch.compile
#   tests      the whole test suite
#   profile    per op and backend at the issues' target shapes: wall vs kernel time, launches, top kernels
#   sweep      the Triton kernels' launch settings (attention: also tl.dot precision) at the target shapes
#              (benchmarks/sweep_triton.py): pick the shipped defaults from its table
#   sanitizer  compute-sanitizer memcheck on the native CUDA kernels' tests (works on Firecracker machines only)
#   bench      the benchmarks, one pytest run per file (BENCH_FILES overrides the list), each with its JSON
# The whole call keeps inside GPU_CHECK_BUDGET_S seconds (default 560, under the tool's 600 s limit): each phase
# gets at most what is left, so the script always reaches its end and packs its results. Everything lands in
# $OUT/gpu_check.tar.gz (the tool brings back at most 8 files) plus $OUT/summary.md, the benchmark tables.
# Uses the machine's own python3 (torch 2.11, Triton 3.6): no network there, nothing is downloaded.
set -uo pipefail
OUT="${OUT:-/tmp/t2ifast-gpu-check}"
LOGS=/tmp/t2ifast-gpu-check-logs
rm -rf "$LOGS" && mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export T2IFAST_REQUIRE_EXT=1 T2IFAST_REQUIRE_CUDA_EXT=1
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-560} ))
PHASES=" ${*:-build ceilings gpu-tests sanitizer bench} "
BENCH_FILES="${BENCH_FILES:-bench_damsm_word_scores.py bench_matching_aware_loss.py bench_word_region_attention.py
  bench_deconv_bn_act.py bench_train_step.py}"

wants() { [[ "$PHASES" == *" $1 "* ]]; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S), $(( DEADLINE - $(date +%s) )) s left)"; }
# within SECONDS COMMAND...: the command, stopped when SECONDS or the call's budget (less 20 s to pack up) runs out
within() {
  local left=$(( DEADLINE - $(date +%s) - 20 )) limit=$1; shift
  (( left < limit )) && limit=$left
  if (( limit <= 0 )); then echo "(skipped: the call's time budget is spent)"; return 124; fi
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?; (( rc == 124 )) && echo "(stopped after $limit s)"; return $rc
}
pack() {
  cat "$LOGS"/summary-*.md >"$OUT/summary.md" 2>/dev/null
  tar -czf "$OUT/gpu_check.tar.gz" -C "$LOGS" . 2>/dev/null
}
trap pack EXIT

if wants build; then
  step "build"
  start=$(date +%s)
  within 400 python3 -m pip install -q --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1 \
    || { tail -40 "$LOGS/build.log"; exit 1; }
  echo "build took $(( $(date +%s) - start )) s"
  python3 -m t2ifast.info | tee "$LOGS/info.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$LOGS/gpu.txt"
fi

if wants ceilings; then
  step "device ceilings"
  within 60 python3 benchmarks/roofline.py | tee "$LOGS/roofline.txt"
fi

if wants gpu-tests; then
  step "GPU tests (every test whose name ends in _cuda)"
  within 300 python3 -m pytest tests -q -k cuda -rfEs --tb=short -p no:cacheprovider >"$LOGS/gpu-tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$LOGS/gpu-tests.log" | tail -40
fi

if wants tests; then
  step "the whole test suite"
  within 500 python3 -m pytest tests -q -rfE -p no:cacheprovider >"$LOGS/tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$LOGS/tests.log" | tail -30
fi

if wants profile; then
  step "profile: wall vs kernel time per op and backend"
  within 120 python3 benchmarks/profile_ops.py 2>&1 | tee "$LOGS/profile.txt"
fi

if wants sweep; then
  step "sweep: Triton launch settings"
  within 300 python3 benchmarks/sweep_triton.py 2>&1 | tee "$LOGS/sweep.txt"
fi

if wants sanitizer; then
  step "compute-sanitizer memcheck on the native CUDA kernels' tests"
  within 200 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest tests -q -k "cuda and native" -p no:cacheprovider >"$LOGS/sanitizer.log" 2>&1
  echo "compute-sanitizer exit code $? (0 = clean; 9 = errors found)"
  grep -E "ERROR SUMMARY|Device not supported|passed|failed" "$LOGS/sanitizer.log" | tail -5
fi

if wants bench; then
  for file in $BENCH_FILES; do
    name="${file#bench_}"; name="${name%.py}"
    step "benchmarks: $file"
    within 240 python3 -m pytest "benchmarks/$file" -q -p no:cacheprovider --benchmark-json="$LOGS/bench-$name.json" \
      --benchmark-columns=median,iqr,rounds --benchmark-sort=name >"$LOGS/bench-$name.txt" 2>&1
    tail -3 "$LOGS/bench-$name.txt"
    [[ -s "$LOGS/bench-$name.json" ]] && python3 benchmarks/summarize.py "$LOGS/bench-$name.json" >"$LOGS/summary-$name.md"
  done
fi
step "done"

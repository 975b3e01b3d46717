#!/usr/bin/env bash
# tp's CUDA/NCCL tests and GPU benchmarks on a GPU machine, in two calls that each end inside a
# fixed budget (TP_GPU_BUDGET seconds, 270 by default): the GPU machines allow ~15 minutes in all
# and 10 per command, so no call may depend on luck to finish. The machines have nvcc, CMake,
# ninja and PyTorch but no MPI, GoogleTest, Google Benchmark, {fmt}, OpenBLAS or registry, so what
# the build needs travels in .deps/ (git-ignored).
#
#   here, once:  scripts/pack-gpu-deps.sh
#   call (a):    run(command="scripts/gpu-suite.sh tests", carry=[".deps"], timeout_s=330)
#   call (b):    run(command="scripts/gpu-suite.sh bench", carry=[".deps"], timeout_s=330)
#
# (a) builds googletest, configures tp, builds every CUDA/NCCL test binary that this configuration
#     has (and the benchmark, in parallel, for (b)) and runs the binaries side by side.
# (b) builds the benchmark if (a) did not leave it (a fresh machine), runs it, then PyTorch eager
#     on the same shapes, and writes the comparison table.
# Every step runs under `timeout` with what is left of the budget, and a step that would start
# with nothing left is reported as not run; so a call ends on its own before the tool's limit.
#
# Results go to $OUT (the run tool's folder, whose files come back; build-gpu/out-<mode>
# elsewhere), written as the call goes, so a call stopped from outside still returns what it did.
# At most five files (the tool returns eight): summary.md (machine, what was found and built,
# per-binary counts, failures, what one GPU cannot show), build.log, and tests.log (every test
# line, prefixed with its binary) or bench.log, gpu_layers.json, torch_layers.json.
# Exit status: 0 when everything that ran passed.
#
# Environment: TP_GPU_BUDGET (seconds), TP_CUDA_ARCH (default: the GPU's compute capability, else
# 90), TP_BENCH_FILTER (--benchmark_filter regex over names like bf16/mlp_forward/4096/8192),
# TP_BENCH_MIN_TIME (seconds per benchmark, 0.3), TP_GPU_BUILD_DIR (build-gpu).
set -uo pipefail
{  # the whole script is one compound command, parsed before it runs: editing the file mid-run is safe
mode=${1:-}
case "$mode" in
  tests | bench) ;;
  *) echo "usage: $0 tests|bench   (see the comment at the top of this file)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
deps=$root/.deps
work=${TP_GPU_BUILD_DIR:-$root/build-gpu}
build=$work/tp
out=${OUT:-$work/out-$mode}
mkdir -p "$work" "$out"
budget=${TP_GPU_BUDGET:-270}
reserve=10  # seconds kept for the summary after the last step
jobs=$(nproc)
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
summary=$out/summary.md
buildlog=$out/build.log
: > "$summary"
t0=$SECONDS

left() { echo $((budget - (SECONDS - t0) - reserve)); }
note() { echo "$*" | tee -a "$summary"; }
# step NAME LOG COMMAND...: runs COMMAND, output appended to LOG, stopped when the budget is spent.
step() {
  local name=$1 logf=$2 l rc
  shift 2
  l=$(left)
  if [ "$l" -le 5 ]; then
    note "- $name: not run, the ${budget} s budget is spent"
    return 124
  fi
  echo "== $(date -u +%T) $name (at most $l s)" | tee -a "$logf"
  timeout -k 5 "$l" "$@" >> "$logf" 2>&1
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then note "- $name: stopped when the ${budget} s budget ran out"; fi
  return $rc
}
finish() {
  note ""
  note "Finished $mode in $((SECONDS - t0)) s of a ${budget} s budget: $1"
  exit "$2"
}

note "# tp GPU suite: $mode ($(date -u '+%F %T') UTC)"
note ""
gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
gpus=${gpus:-0}
if [ "$gpus" -gt 0 ]; then
  note "- GPUs: $gpus x $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2> /dev/null | head -1)"
else
  why=$(command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1 | head -1 || echo "nvidia-smi not found")
  note "- GPUs: none ($why); GPU tests will report skipped"
fi
note "- nvcc: $(nvcc --version 2> /dev/null | tail -1 || echo 'not found')"
note "- $(cmake --version 2> /dev/null | head -1), $(nproc) cores"
[ -d "$deps/src/googletest" ] && [ -f "$deps/openblas.tar.xz" ] ||
  { note "- .deps/ is missing: run scripts/pack-gpu-deps.sh here and carry .deps"; finish "nothing built" 2; }
command -v nvcc > /dev/null || { note "- nvcc is not on PATH or in /usr/local/cuda/bin"; finish "nothing built" 2; }
arch=${TP_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d '. ')}
arch=${arch:-90}
generator=Ninja
command -v ninja > /dev/null || generator="Unix Makefiles"

# --- googletest and OpenBLAS (once per machine; a warm machine skips them), configure ---
prefix=$work/prefix
if [ ! -f "$prefix/.gtest-done" ]; then
  step "googletest" "$buildlog" bash -c "cmake -S '$deps/src/googletest' -B '$work/gtest' -G '$generator' \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX='$prefix' -DBUILD_GMOCK=ON -DINSTALL_GTEST=ON &&
    cmake --build '$work/gtest' -j $jobs && cmake --install '$work/gtest'" || finish "building googletest failed (build.log)" 2
  touch "$prefix/.gtest-done"
fi
gtest_dir=$(dirname "$(find "$prefix" -name GTestConfig.cmake | head -1)")
[ -d "$work/openblas" ] || tar -xJf "$deps/openblas.tar.xz" -C "$work"
# Configured on every call (seconds when nothing changed), so the target list below is current.
step "configure (CUDA architectures $arch)" "$buildlog" cmake -S . -B "$build" -G "$generator" \
    -DCMAKE_BUILD_TYPE=Release -DTP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DTP_CUDA_TEST_UNITS="$jobs" \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_PREFIX_PATH="$work/openblas" -DGTest_DIR="$gtest_dir" \
    -Dfmt_DIR="$deps/fmt/lib/cmake/fmt" -Dbenchmark_DIR="$deps/benchmark/lib/x86_64-linux-gnu/cmake/benchmark" \
    -DTP_BUILD_BENCH=OFF -DTP_BUILD_GPU_BENCH=ON -DTP_BUILD_EXAMPLES=OFF -DTP_INSTALL=OFF ||
  { tail -30 "$buildlog"; finish "configuring tp failed (build.log)" 2; }
# Which NCCL configure found (cmake/FindNCCL.cmake), read from the cache (a re-configure prints nothing).
cache_var() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" | head -1; }
nccl_lib=$(cache_var NCCL_LIBRARY) nccl_inc=$(cache_var NCCL_INCLUDE_DIR)
if [ -f "$nccl_inc/nccl.h" ] && [ -e "$nccl_lib" ]; then
  nccl_version=$(sed -nE 's/^#define NCCL_(MAJOR|MINOR|PATCH) ([0-9]+).*/\2/p' "$nccl_inc/nccl.h" | head -3 | paste -sd.)
  note "- NCCL $nccl_version: $nccl_lib (headers $nccl_inc)"
else
  note "- NCCL: not found (looked in: $(cache_var NCCL_SEARCHED)); set NCCL_ROOT to use one"
fi

# --- which targets this configuration has ---
# Test binaries are the executables named tp_cuda*_tests / tp_nccl*_tests (Ninja knows which targets
# link an executable; object libraries of the same pattern are left out).
if [ "$generator" = Ninja ]; then
  test_targets=$(ninja -C "$build" -t targets all 2> /dev/null |
    sed -nE 's#^([^:]*/)?(tp_(cuda|nccl)[a-z0-9_]*_tests): [A-Za-z]+_EXECUTABLE_LINKER.*#\2#p' | sort -u | tr '\n' ' ')
  bench_target=$(ninja -C "$build" -t targets all 2> /dev/null |
    sed -nE 's#^([^:]*/)?(tp_bench_gpu_layers): [A-Za-z]+_EXECUTABLE_LINKER.*#\2#p' | head -1)
else
  all_targets=$(cmake --build "$build" --target help 2> /dev/null | sed -nE 's/^\.\.\. ([A-Za-z0-9_]+).*/\1/p')
  test_targets=$(echo "$all_targets" | grep -E '^tp_(cuda|nccl)[a-z0-9_]*_tests$' | grep -v layer | sort -u | tr '\n' ' ')
  bench_target=$(echo "$all_targets" | grep -xE 'tp_bench_gpu_layers' | head -1)
fi
if [ "$mode" = tests ]; then
  targets="$test_targets $bench_target"  # the benchmark compiles beside the tests, for call (b)
  echo "$test_targets" | grep -q tp_nccl_tests || note "- tp_nccl_tests: not in this configuration (no NCCL found), not built"
else
  targets=$bench_target
  [ -n "$bench_target" ] || { note "- tp_bench_gpu_layers is not in this configuration (Google Benchmark not found?)"; finish "nothing to run" 2; }
fi
note "- targets: $targets"
keep_going=()
[ "$generator" = Ninja ] && keep_going=(-- -k 0)  # one target failing leaves the others built
step "build" "$buildlog" cmake --build "$build" -j "$jobs" --target $targets "${keep_going[@]}"
build_rc=$?
if [ $build_rc != 0 ]; then
  note "- build failed for some targets (exit $build_rc); first errors:"
  grep -E "error|FAILED:" "$buildlog" | head -15 | sed 's/^/    /' | tee -a "$summary"
fi
exe() { find "$build" -type f -perm -u+x -name "$1" 2> /dev/null | head -1; }

if [ "$mode" = tests ]; then
  # --- the test binaries, side by side (they share the GPU; the references use the cores) ---
  log=$out/tests.log
  : > "$log"
  mkdir -p "$work/rc" "$work/xml"
  rm -f "$work"/rc/*
  ran=()
  l=$(left)
  for t in $test_targets; do
    e=$(exe "$t")
    [ -n "$e" ] || continue  # object libraries and targets that failed to build
    ran+=("$t")
    (
      start=$SECONDS
      timeout -k 5 "$l" "$e" --gtest_output="xml:$work/xml/$t.xml" 2>&1 | sed -u "s/^/[$t] /" >> "$log"
      echo "${PIPESTATUS[0]} $((SECONDS - start))" > "$work/rc/$t"
    ) &
  done
  [ ${#ran[@]} -gt 0 ] && echo "== $(date -u +%T) running ${ran[*]} (at most $l s)"
  wait
  note ""
  note "## Tests"
  note ""
  status=0
  total_pass=0 total_fail=0 total_skip=0
  for t in $test_targets; do
    if [ ! -f "$work/rc/$t" ]; then
      note "- $t: not built (see build.log), not run"
      status=1
      continue
    fi
    read -r rc secs < "$work/rc/$t"
    pass=$(grep -E "^\[$t\] \[  PASSED  \] [0-9]+ test" "$log" | grep -oE '[0-9]+ test' | grep -oE '[0-9]+' | head -1)
    fail=$(grep -E "^\[$t\] \[  FAILED  \] [0-9]+ test" "$log" | grep -oE '[0-9]+ test' | grep -oE '[0-9]+' | head -1)
    skip=$(grep -E "^\[$t\] \[  SKIPPED \] [0-9]+ test" "$log" | grep -oE '[0-9]+ test' | grep -oE '[0-9]+' | head -1)
    pass=${pass:-0} fail=${fail:-0} skip=${skip:-0}
    total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
    case $rc in
      0) how="exit 0" ;;
      124 | 137) how="STOPPED at the budget after $secs s; last test started: $(grep -E "^\[$t\] \[ RUN      \]" "$log" | tail -1 | sed 's/.*\] //')" ;;
      *) how="exit $rc" ;;
    esac
    note "- $t: $pass passed, $fail failed, $skip skipped ($how, $secs s)"
    [ "$rc" = 0 ] || status=1
    grep -E "^\[$t\] \[  FAILED  \] [A-Za-z]" "$log" | sed -E 's/^\[[^]]*\] \[  FAILED  \] /    failed: /; s/ \([0-9]+ ms\)$//' |
      sort -u | head -30 | tee -a "$summary"
    if [ "$skip" -gt 0 ]; then
      reason=$(grep -E "^\[$t\] no CUDA device" "$log" | head -1 | sed 's/^\[[^]]*\] //')
      [ -n "$reason" ] && note "    skipped because: $reason"
    fi
  done
  [ ${#ran[@]} -gt 0 ] || { note "- no test binary was built"; status=1; }
  (cd "$work" && tar -czf "$out/tests-xml.tar.gz" xml 2> /dev/null) || true
  if [ "$gpus" = 0 ]; then
    note ""
    note "No GPU on this machine: the tests above that need one reported skipped, with the reason."
  elif [ "$gpus" -lt 2 ]; then
    note ""
    note "Not shown by this run (one GPU): NCCL between real peers (NCCL refuses two ranks on one device, so"
    note "the NCCL binary runs world size 1 only, where every count is even and the grouped broadcast/reduce"
    note "path of uneven all_gather_v/reduce_scatter_v never runs); a timeout or abort with a live peer; a"
    note "failed split with a live parent; the device-memory LocalCommunicator across several GPUs. The"
    note "multi-rank tests above ran as threads over LocalCommunicator with device memory on the one GPU."
  fi
  note ""
  note "$total_pass passed, $total_fail failed, $total_skip skipped"
  [ $build_rc = 0 ] || status=1
  finish "$([ $status = 0 ] && echo 'every test that ran passed' || echo 'FAILURES (see above and tests.log)')" $status
fi

# --- bench: tp vs bare cuBLASLt, then PyTorch eager, then the table ---
e=$(exe tp_bench_gpu_layers)
[ -n "$e" ] || finish "tp_bench_gpu_layers did not build (build.log)" 1
log=$out/bench.log
stdbuf=()
command -v stdbuf > /dev/null && stdbuf=(stdbuf -oL)  # lines reach bench.log as they are printed
torch_share=45  # seconds kept for PyTorch (about 30 on an H200)
l=$(left)
bench_time=$((l - torch_share))
if [ $bench_time -gt 10 ]; then
  echo "== $(date -u +%T) tp_bench_gpu_layers (at most $bench_time s)" | tee -a "$log"
  TP_BENCH_DEADLINE_S=$((bench_time - 20)) timeout -k 5 "$bench_time" "${stdbuf[@]}" "$e" --benchmark_out="$out/gpu_layers.json" --benchmark_out_format=json \
    --benchmark_min_time="${TP_BENCH_MIN_TIME:-0.3}" --benchmark_filter="${TP_BENCH_FILTER:-.}" >> "$log" 2>&1
  rc=$?
  bench_rc=$rc
  case $rc in
    0) note "- tp_bench_gpu_layers: done" ;;
    124 | 137) note "- tp_bench_gpu_layers: killed at $bench_time s; its rows are in bench.log (no JSON)" ;;
    *) note "- tp_bench_gpu_layers: exit $rc (bench.log)" ;;
  esac
else
  bench_rc=124
  note "- tp_bench_gpu_layers: not run, the ${budget} s budget is spent"
fi
l=$(left)
if python3 -c 'import torch' 2> /dev/null; then
  step "PyTorch eager (torch_layers.py)" "$log" python3 bench/gpu/torch_layers.py --out "$out/torch_layers.json" \
    --max-seconds $((l > 20 ? l - 20 : 1))
  note "- PyTorch: $(python3 -c 'import torch; print(torch.__version__)' 2> /dev/null)"
else
  note "- PyTorch: not installed here; no PyTorch rows"
fi
note ""
python3 bench/gpu/summarize.py "$out/gpu_layers.json" "$out/torch_layers.json" 2>&1 | tee -a "$summary"
[ "$bench_rc" = 0 ] && finish "benchmarks done" 0
finish "the benchmark did not finish (bench.log)" 1
}

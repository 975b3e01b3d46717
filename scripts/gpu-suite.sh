#!/usr/bin/env bash
# tp's CUDA/NCCL tests and GPU benchmarks on a GPU machine, in two calls that each end inside a
# fixed budget (TP_GPU_BUDGET seconds: 240 for tests, 270 for bench): the GPU machines allow ~15
# minutes in all, machine starts included, and 10 per command, so no call may depend on luck to
# finish, and the tests call leaves room to run again. The machines have nvcc, CMake, ninja and
# PyTorch but no MPI, GoogleTest, Google Benchmark, {fmt}, OpenBLAS or registry, so what the build
# needs travels in .deps/ (git-ignored).
#
#   here, once:  scripts/pack-gpu-deps.sh
#   call (a):    run(command="scripts/gpu-suite.sh tests", carry=[".deps"], timeout_s=300)
#   call (b):    run(command="scripts/gpu-suite.sh bench", carry=[".deps"], timeout_s=330)
#
# (a) runs the preflight (scripts/gpu_preflight.cu, seconds: driver, devices, memory pools,
#     concurrentManagedAccess, one kernel; first in summary.md, and on a GPU machine whose CUDA
#     cannot run a kernel the call stops there), builds googletest (once per machine), unpacks
#     OpenBLAS, configures tp with the tests only (build-gpu/tests), builds every CUDA/NCCL test
#     binary this configuration has, and runs the binaries side by side.
# (b) configures tp with the GPU benchmark only (build-gpu/bench: -DTP_BUILD_TESTS=OFF, so no
#     googletest), builds and runs it, then PyTorch eager on the same shapes (its import counted in
#     the budget), and writes the comparison table.
# Every step runs under `timeout` with what is left of the budget; a step that would start with
# less than a few seconds left, and a test binary or benchmark with less than min_start, is
# reported as not run. Each step's wall and CPU seconds go to summary.md (the build's cost per
# core). Executables a call would build are deleted before its build, so only what this build
# produced is run (a failed or stopped compile leaves nothing stale to report as current).
#
# Results go to $OUT (the run tool's folder, whose files come back; build-gpu/out-<mode>
# elsewhere), written as the call goes, so a call stopped from outside still returns what it did.
# At most five files (the tool returns eight): summary.md (preflight, machine, what was found and
# built, per-binary counts, failures, what one GPU cannot show), build.log, and tests.log (every
# test line, prefixed with its binary) or bench.log, gpu_layers.json, torch_layers.json.
# Exit status: 0 when everything ran and passed.
#
# Environment: TP_GPU_BUDGET (seconds), TP_CUDA_ARCH (default: the GPU's compute capability, else
# 90), TP_BENCH_FILTER (--benchmark_filter regex over names like bf16/mlp_forward/4096/8192),
# TP_BENCH_MIN_TIME (seconds per benchmark, 0.3), TP_GPU_BUILD_DIR (build-gpu), TP_CUDA_TEST_UNITS
# (the units the CUDA test bodies compile in; one per core by default: set 16 on a small machine to
# measure a 16-core machine's build in CPU seconds).
set -uo pipefail
{  # the whole script is one compound command, parsed before it runs: editing the file mid-run is safe
mode=${1:-}
case "$mode" in
  tests) default_budget=240 ;;
  bench) default_budget=270 ;;
  *) echo "usage: $0 tests|bench   (see the comment at the top of this file)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
deps=$root/.deps
work=${TP_GPU_BUILD_DIR:-$root/build-gpu}
build=$work/$mode  # one build directory per call: each configures only what it builds
out=${OUT:-$work/out-$mode}
mkdir -p "$work" "$out"
budget=${TP_GPU_BUDGET:-$default_budget}
reserve=10    # seconds kept for the summary after the last step
min_step=5    # a build step is not started with less than this left
min_start=10  # nor a test binary or the benchmark: CUDA's start-up alone takes seconds
jobs=$(nproc)
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
summary=$out/summary.md
buildlog=$out/build.log
: > "$summary"
: > "$buildlog"
t0=$SECONDS

left() { echo $((budget - (SECONDS - t0) - reserve)); }
note() { echo "$*" | tee -a "$summary"; }
# CPU seconds (user + system) of the children this shell has waited for, from a file that the
# `times` builtin wrote (its second line), so that each step's CPU time is a difference.
cpu_of() { tail -1 "$1" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } printf "%d\n", s }'; }
build_wall=0 build_cpu=0
# step NAME LOG COMMAND...: runs COMMAND, output appended to LOG, stopped when the budget is spent;
# notes its wall and CPU seconds.
step() {
  local name=$1 logf=$2 l rc start cpu
  shift 2
  l=$(left)
  if [ "$l" -lt "$min_step" ]; then
    note "- $name: not run, the ${budget} s budget is spent ($l s left)"
    return 124
  fi
  echo "== $(date -u +%T) $name (at most $l s)" | tee -a "$logf"
  times > "$work/.times-before"  # a builtin with a redirection runs in this shell, not a subshell
  start=$SECONDS
  timeout -k 5 "$l" "$@" >> "$logf" 2>&1
  rc=$?
  times > "$work/.times-after"
  cpu=$(($(cpu_of "$work/.times-after") - $(cpu_of "$work/.times-before")))
  build_wall=$((build_wall + SECONDS - start)) build_cpu=$((build_cpu + cpu))
  case $rc in
    0) note "- $name: $((SECONDS - start)) s ($cpu CPU s)" ;;
    124 | 137) note "- $name: stopped when the ${budget} s budget ran out, after $((SECONDS - start)) s ($cpu CPU s)" ;;
    *) note "- $name: exit $rc after $((SECONDS - start)) s ($cpu CPU s)" ;;
  esac
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
arch=${TP_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d '. ')}
arch=${arch:-90}

# --- preflight (tests): what the GPU offers, before minutes go into a build that cannot run ---
if [ "$mode" = tests ]; then
  if ! command -v nvcc > /dev/null; then
    note "- preflight: nvcc is not on PATH or in /usr/local/cuda/bin"
    finish "nothing built" 2
  fi
  start=$SECONDS
  sm=${arch##*[;,]}  # the last of a list such as "80;90"
  if timeout -k 5 60 nvcc -arch=sm_"$sm" -o "$work/gpu_preflight" scripts/gpu_preflight.cu >> "$buildlog" 2>&1; then
    timeout -k 5 30 "$work/gpu_preflight" > "$work/preflight.txt" 2>&1
    preflight_rc=$?
    tee -a "$summary" < "$work/preflight.txt"
    note "- preflight: $((SECONDS - start)) s, exit $preflight_rc (for sm_$sm)"
    if [ "$gpus" -gt 0 ] && [ "$preflight_rc" != 0 ]; then
      note "- nvidia-smi lists $gpus GPU(s), but CUDA cannot run a kernel for sm_$sm on them (above): the tests"
      note "  would fail or skip, so nothing is built (TP_CUDA_ARCH sets the architecture)"
      finish "the preflight failed on a GPU machine" 2
    fi
  else
    note "- preflight: scripts/gpu_preflight.cu did not compile for sm_$sm (build.log); going on"
  fi
fi

if [ "$gpus" -gt 0 ]; then
  note "- GPUs: $gpus x $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2> /dev/null | head -1)"
else
  why=$(command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1 | head -1 || echo "nvidia-smi not found")
  note "- GPUs: none ($why); GPU tests will report skipped"
fi
note "- nvcc: $(nvcc --version 2> /dev/null | tail -1 || echo 'not found')"
note "- $(cmake --version 2> /dev/null | head -1), $jobs cores"
if [ "$mode" = tests ]; then
  [ -d "$deps/src/googletest" ] && [ -f "$deps/openblas.tar.xz" ] && [ -d "$deps/fmt" ] ||
    { note "- .deps/ lacks googletest, OpenBLAS or {fmt}: run scripts/pack-gpu-deps.sh here and carry .deps"; finish "nothing built" 2; }
else
  [ -d "$deps/benchmark" ] && [ -d "$deps/fmt" ] ||
    { note "- .deps/ lacks Google Benchmark or {fmt}: run scripts/pack-gpu-deps.sh here and carry .deps"; finish "nothing built" 2; }
fi
command -v nvcc > /dev/null || { note "- nvcc is not on PATH or in /usr/local/cuda/bin"; finish "nothing built" 2; }
generator=Ninja
command -v ninja > /dev/null || generator="Unix Makefiles"

# --- what each call configures: the tests with googletest and OpenBLAS, or the benchmark alone ---
mode_flags=()
if [ "$mode" = tests ]; then
  prefix=$work/prefix
  if [ ! -f "$prefix/.gtest-done" ]; then  # once per machine; a warm machine skips it
    step "googletest" "$buildlog" bash -c "cmake -S '$deps/src/googletest' -B '$work/gtest' -G '$generator' \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX='$prefix' -DBUILD_GMOCK=ON -DINSTALL_GTEST=ON &&
      cmake --build '$work/gtest' -j $jobs && cmake --install '$work/gtest'" || finish "googletest not built (above, build.log)" 2
    touch "$prefix/.gtest-done"
  fi
  gtest_dir=$(dirname "$(find "$prefix" -name GTestConfig.cmake | head -1)")
  [ -d "$work/openblas" ] || tar -xJf "$deps/openblas.tar.xz" -C "$work"
  mode_flags=(-DTP_BUILD_TESTS=ON -DTP_BUILD_GPU_BENCH=OFF -DTP_CUDA_TEST_UNITS="${TP_CUDA_TEST_UNITS:-$jobs}"
    -DCMAKE_PREFIX_PATH="$work/openblas" -DGTest_DIR="$gtest_dir")
  # nlohmann json (tp::io): the models and the trainer on the GPU (tp_cuda_train_tests); packed since
  # scripts/pack-gpu-deps.sh carries it, absent from older .deps/ (those binaries are then not built).
  [ -d "$deps/nlohmann_json" ] && mode_flags+=(-Dnlohmann_json_DIR="$deps/nlohmann_json/share/cmake/nlohmann_json")
else
  mode_flags=(-DTP_BUILD_TESTS=OFF -DTP_BUILD_GPU_BENCH=ON
    -Dbenchmark_DIR="$deps/benchmark/lib/x86_64-linux-gnu/cmake/benchmark")
fi
# Configured on every call (seconds when nothing changed), so the target list below is current.
step "configure (CUDA architectures $arch)" "$buildlog" cmake -S . -B "$build" -G "$generator" \
    -DCMAKE_BUILD_TYPE=Release -DTP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -Dfmt_DIR="$deps/fmt/lib/cmake/fmt" \
    -DTP_BUILD_BENCH=OFF -DTP_BUILD_EXAMPLES=OFF -DTP_INSTALL=OFF "${mode_flags[@]}" ||
  { tail -30 "$buildlog"; finish "tp not configured (above, build.log)" 2; }
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
  executables=$(ninja -C "$build" -t targets all 2> /dev/null |
    sed -nE 's#^([^:]*/)?([A-Za-z0-9_]+): [A-Za-z]+_EXECUTABLE_LINKER.*#\2#p' | sort -u)
else
  executables=$(cmake --build "$build" --target help 2> /dev/null | sed -nE 's/^\.\.\. ([A-Za-z0-9_]+).*/\1/p' | sort -u)
fi
test_targets=$(echo "$executables" | grep -E '^tp_(cuda|nccl)[a-z0-9_]*_tests$' | tr '\n' ' ')
bench_target=$(echo "$executables" | grep -xE 'tp_bench_gpu_layers' | head -1)
if [ "$mode" = tests ]; then
  targets=$test_targets
  [ -n "$targets" ] || { note "- no CUDA test binary in this configuration (build.log)"; finish "nothing to build" 2; }
  echo "$test_targets" | grep -q tp_nccl_tests || note "- tp_nccl_tests: not in this configuration (no NCCL found), not built"
  echo "$test_targets" | grep -q tp_cuda_train_tests ||
    note "- tp_cuda_train_tests: not in this configuration (no nlohmann json: rerun scripts/pack-gpu-deps.sh), not built"
else
  targets=$bench_target
  [ -n "$bench_target" ] || { note "- tp_bench_gpu_layers is not in this configuration (Google Benchmark not found?)"; finish "nothing to run" 2; }
fi
note "- targets: $targets"
exe() { find "$build" -type f -perm -u+x -name "$1" 2> /dev/null | head -1; }
# Stale executables: with -k 0 a failed or stopped compile leaves the previous build's binary in
# place, which would then be run and reported as this build's. None survives to the build.
stale=()
for t in $targets; do
  while read -r e; do [ -n "$e" ] && rm -f "$e" && stale+=("$t"); done < <(find "$build" -type f -name "$t" 2> /dev/null)
done
[ ${#stale[@]} -gt 0 ] && note "- deleted before the build, so that only this build's executables run: ${stale[*]}"
keep_going=()
[ "$generator" = Ninja ] && keep_going=(-- -k 0)  # one target failing leaves the others built
step "build" "$buildlog" cmake --build "$build" -j "$jobs" --target $targets "${keep_going[@]}"
build_rc=$?
if [ $build_rc != 0 ]; then
  note "- build failed or stopped for some targets (exit $build_rc); first errors:"
  grep -E "error|FAILED:" "$buildlog" | head -15 | sed 's/^/    /' | tee -a "$summary"
fi
note "- build cost: $build_wall s, $build_cpu CPU s on $jobs cores (configure, googletest when built, and the targets)"

if [ "$mode" = tests ]; then
  # --- the test binaries, side by side (they share the GPU; the references use the cores) ---
  # Started together, each gets all that is left of the budget (its share of a side-by-side run);
  # none is started with less than min_start left.
  log=$out/tests.log
  : > "$log"
  mkdir -p "$work/rc" "$work/xml"
  rm -f "$work"/rc/* "$work"/xml/*
  ran=()
  l=$(left)
  for t in $test_targets; do
    e=$(exe "$t")
    [ -n "$e" ] || continue  # failed or stopped: reported below as not built
    if [ "$l" -lt "$min_start" ]; then
      echo "budget $l" > "$work/rc/$t"
      continue
    fi
    ran+=("$t")
    (
      start=$SECONDS
      timeout -k 5 "$l" "$e" --gtest_output="xml:$work/xml/$t.xml" 2>&1 | sed -u "s/^/[$t] /" >> "$log"
      echo "${PIPESTATUS[0]} $((SECONDS - start))" > "$work/rc/$t"
    ) &
  done
  [ ${#ran[@]} -gt 0 ] && echo "== $(date -u +%T) running ${ran[*]} (at most $l s each)"
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
    if [ "$rc" = budget ]; then
      note "- $t: built, NOT RUN: $secs s of the ${budget} s budget left, less than the $min_start s a binary needs"
      status=1
      continue
    fi
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
    buffers=$(grep -E "^\[$t\] test buffers: " "$log" | head -1 | sed 's/^\[[^]]*\] //')
    [ -n "$buffers" ] && note "    $buffers"
  done
  [ -n "$(ls "$work/rc")" ] || { note "- no test binary was built"; status=1; }
  (cd "$work" && tar -czf "$out/tests-xml.tar.gz" xml 2> /dev/null) || true
  if [ "$gpus" = 0 ] && [ ${#ran[@]} -gt 0 ]; then
    note ""
    note "No GPU on this machine: the tests above that need one reported skipped, with the reason."
  elif [ "$gpus" -lt 2 ]; then
    note ""
    note "Not shown by this run (one GPU): NCCL between real peers (NCCL refuses two ranks on one device, so"
    note "the NCCL binary runs world size 1 only, where every count is even and the grouped broadcast/reduce"
    note "path of uneven all_gather_v/reduce_scatter_v never runs); a timeout or abort with a live peer, a stuck"
    note "peer in the call signature exchange; a failed split with a live parent; the device-memory"
    note "LocalCommunicator across several GPUs. The multi-rank tests above ran as threads over"
    note "LocalCommunicator with device memory on the one GPU."
  fi
  note ""
  note "$total_pass passed, $total_fail failed, $total_skip skipped"
  [ $build_rc = 0 ] || status=1
  finish "$([ $status = 0 ] && echo 'every test binary ran and passed' || echo 'FAILURES, or binaries not built or not run (see above and tests.log)')" $status
fi

# --- bench: tp vs bare cuBLASLt, then PyTorch eager, then the table ---
e=$(exe tp_bench_gpu_layers)
[ -n "$e" ] || finish "tp_bench_gpu_layers did not build (build.log)" 1
log=$out/bench.log
: > "$log"
stdbuf=()
command -v stdbuf > /dev/null && stdbuf=(stdbuf -oL)  # lines reach bench.log as they are printed
torch_share=45  # seconds kept for PyTorch, its import included (about 30 on an H200)
l=$(left)
bench_time=$((l - torch_share))
if [ $bench_time -ge $min_start ]; then
  echo "== $(date -u +%T) tp_bench_gpu_layers (at most $bench_time s)" | tee -a "$log"
  start=$SECONDS
  TP_BENCH_DEADLINE_S=$((bench_time > 40 ? bench_time - 20 : bench_time / 2)) timeout -k 5 "$bench_time" \
    "${stdbuf[@]}" "$e" --benchmark_out="$out/gpu_layers.json" --benchmark_out_format=json \
    --benchmark_min_time="${TP_BENCH_MIN_TIME:-0.3}" --benchmark_filter="${TP_BENCH_FILTER:-.}" >> "$log" 2>&1
  rc=$?
  bench_rc=$rc
  case $rc in
    0) note "- tp_bench_gpu_layers: done in $((SECONDS - start)) s" ;;
    124 | 137) note "- tp_bench_gpu_layers: killed at $bench_time s; its rows are in bench.log (no JSON)" ;;
    *) note "- tp_bench_gpu_layers: exit $rc after $((SECONDS - start)) s (bench.log)" ;;
  esac
else
  bench_rc=124
  note "- tp_bench_gpu_layers: NOT RUN: $bench_time s of the ${budget} s budget left for it (after $torch_share s kept for PyTorch), less than $min_start s"
fi
# PyTorch's import (seconds on a cold machine) runs inside the step, under the budget; the script
# prints the version it measured with, or says that PyTorch is missing.
l=$(left)
step "PyTorch eager (torch_layers.py)" "$log" python3 bench/gpu/torch_layers.py --out "$out/torch_layers.json" \
  --max-seconds $((l > 40 ? l - 20 : l / 2))
torch_line=$(grep -m1 -E '^(PyTorch .* eager on |torch_layers.py: PyTorch is not installed)' "$log")
note "- PyTorch: ${torch_line:-no version printed (bench.log)}"
note ""
python3 bench/gpu/summarize.py "$out/gpu_layers.json" "$out/torch_layers.json" 2>&1 | tee -a "$summary"
[ "$bench_rc" = 0 ] && finish "benchmarks done" 0
finish "the benchmark did not finish (bench.log)" 1
}

#!/usr/bin/env bash
# Builds and runs tp's CUDA test suite and GPU benchmarks on a GPU machine, in one call. The GPU
# machines have nvcc, CMake, ninja and PyTorch but no MPI, GoogleTest, Google Benchmark, {fmt},
# OpenBLAS or package registry, so what the build needs travels in .deps/ (git-ignored).
#
#   1. here, once:           scripts/pack-gpu-deps.sh
#   2. from the session:     run(command="scripts/gpu-suite.sh", carry=[".deps"], timeout_s=600)
#
# Results go to $OUT (the run tool's folder; build-gpu/out elsewhere): gpu.txt, the gtest logs and
# XML of tp_cuda_tests (layers for float/half/bf16 and the conformance suite over LocalCommunicator
# on one GPU, world sizes 1-4) and tp_nccl_tests (the same over NCCL, world size 1 and one rank per
# GPU beyond), gpu_layers.json (tp vs bare cuBLASLt), torch_layers.json (PyTorch eager, same shapes)
# and summary.md (the table for BENCHMARKS.md). Exit status: 0 when every test passed.
#
# Environment: TP_CUDA_ARCH (default: the GPU's compute capability), TP_GPU_SUITE_BENCH=0 to skip
# the benchmarks, TP_BENCH_FILTER (a --benchmark_filter regex), TP_BENCH_MIN_TIME (seconds, 0.3).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
deps=$root/.deps
work=$root/build-gpu
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
jobs=$(nproc)
export PATH=/usr/local/cuda/bin:$PATH
log() { echo "== $(date -u +%T) $*"; }
fail() { echo "gpu-suite: $*" >&2; exit 2; }

if [ ! -d "$deps/src/googletest" ] || [ ! -f "$deps/openblas.tar.xz" ]; then
  fail "no .deps/: run scripts/pack-gpu-deps.sh on the dev machine and carry .deps"
fi
command -v nvcc > /dev/null || fail "nvcc is not on PATH or in /usr/local/cuda/bin"
nvidia-smi -L | tee "$out/gpu.txt" || echo "nvidia-smi failed" | tee "$out/gpu.txt"
arch=${TP_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d '. ')}
[ -n "$arch" ] || arch="80;90"

log "googletest from .deps/src/googletest"
prefix=$work/prefix
if [ ! -f "$prefix/.gtest-done" ]; then
  if ! { cmake -S "$deps/src/googletest" -B "$work/gtest" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DBUILD_GMOCK=ON -DINSTALL_GTEST=ON > "$out/gtest-build.log" 2>&1 &&
    cmake --build "$work/gtest" -j "$jobs" >> "$out/gtest-build.log" 2>&1 &&
    cmake --install "$work/gtest" >> "$out/gtest-build.log" 2>&1; }; then
    tail -30 "$out/gtest-build.log"
    fail "building googletest failed"
  fi
  touch "$prefix/.gtest-done"
fi
gtest_dir=$(dirname "$(find "$prefix" -name GTestConfig.cmake | head -1)")
tar -xJf "$deps/openblas.tar.xz" -C "$work"

log "configure tp (CUDA architectures $arch)"
cmake -S . -B "$work/tp" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_PREFIX_PATH="$work/openblas" -DGTest_DIR="$gtest_dir" \
  -Dfmt_DIR="$deps/fmt/lib/cmake/fmt" -Dbenchmark_DIR="$deps/benchmark/lib/x86_64-linux-gnu/cmake/benchmark" \
  -DTP_BUILD_BENCH=OFF -DTP_BUILD_GPU_BENCH=ON -DTP_BUILD_EXAMPLES=OFF -DTP_INSTALL=OFF > "$out/configure.log" 2>&1 ||
  { tail -40 "$out/configure.log"; fail "configuring tp failed"; }

log "build"
targets="tp_cuda_tests tp_nccl_tests"
[ "${TP_GPU_SUITE_BENCH:-1}" = 0 ] || targets="$targets tp_bench_gpu_layers"
# shellcheck disable=SC2086
cmake --build "$work/tp" -j "$jobs" --target $targets > "$out/build.log" 2>&1 ||
  { grep -E "error|Error" -A3 "$out/build.log" | head -60; fail "building failed (build.log)"; }

status=0
for t in tp_cuda_tests tp_nccl_tests; do
  log "$t"
  "$work/tp/tests/$t" --gtest_output="xml:$out/$t.xml" > "$out/$t.log" 2>&1 || status=1
  grep -E "^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]+ test|test suites ran|no CUDA device" "$out/$t.log" |
    sort -u | head -40
done

if [ "${TP_GPU_SUITE_BENCH:-1}" != 0 ]; then
  log "tp_bench_gpu_layers"
  "$work/tp/bench/gpu/tp_bench_gpu_layers" --benchmark_out="$out/gpu_layers.json" --benchmark_out_format=json \
    --benchmark_min_time="${TP_BENCH_MIN_TIME:-0.3}" --benchmark_filter="${TP_BENCH_FILTER:-.}" \
    > "$out/gpu_layers.txt" 2>&1 || echo "tp_bench_gpu_layers failed" | tee -a "$out/gpu_layers.txt"
  log "PyTorch eager"
  python3 bench/gpu/torch_layers.py --out "$out/torch_layers.json" > "$out/torch_layers.txt" 2>&1 ||
    echo "torch_layers.py failed" | tee -a "$out/torch_layers.txt"
  python3 bench/gpu/summarize.py "$out/gpu_layers.json" "$out/torch_layers.json" > "$out/summary.md" 2>&1
  cat "$out/summary.md"
fi
log "done (tests $([ $status = 0 ] && echo passed || echo FAILED))"
exit $status

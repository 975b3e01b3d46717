#!/usr/bin/env bash
# The test suite under the sanitizers, CPU only (-DTP_CUDA=OFF), each in its own build directory:
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer (-fsanitize=address,undefined, no recovery):
#         tp_tests, tp_models_tests, tp_train_tests (world sizes 1-4 over threads), tp_gloo_tests, and
#         tp_mpi_tests under mpirun -np 1-4;
#   tsan  ThreadSanitizer: tp_tests, tp_models_tests and tp_train_tests, whose ranks are threads
#         sharing memory (MPI and Gloo ranks are processes, and their uninstrumented libraries' own
#         threads only give TSan noise).
# Any report fails the run. OpenBLAS and OpenMP run one thread (their uninstrumented pools are
# invisible to TSan and would be reported as races); LeakSanitizer is off under mpirun, where Open
# MPI's own allocations at exit would drown ours. scripts/tsan.supp lists what TSan cannot judge in
# uninstrumented libraries, and why.
#
#   scripts/sanitize.sh [asan|tsan|all] [-- extra gtest arguments, e.g. --gtest_filter=Local*]
# Build directories: $TP_SANITIZE_DIR (default build-sanitize)/{asan,tsan}.
set -euo pipefail
source "$(dirname "$0")/common.sh"
which=${1:-all}
shift || true
[ "${1:-}" = "--" ] && shift
gtest_args=("$@")
root="${TP_SANITIZE_DIR:-$top/build-sanitize}"
"$top/scripts/install-deps.sh"  # once, for both builds
jobs=$(nproc)  # before OMP_NUM_THREADS=1 below, which nproc obeys

configure() {  # configure DIR FLAGS
  local dir=$1 flags=$2
  cmake -S "$top" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTP_CUDA=OFF -DTP_BUILD_BENCH=OFF \
    -DTP_BUILD_EXAMPLES=OFF -DCMAKE_CXX_FLAGS="$flags -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
}

has_target() { ninja -C "$1" -t targets all 2>/dev/null | grep -q "^$2:"; }

# The other suites whose ranks are threads (when tp::io is built): Hugging Face models and training.
local_suites=(tp_models_tests tp_train_tests)
failed=()
run() {  # run NAME COMMAND...: runs one suite, records a failure
  local name=$1
  shift
  echo "=== $name: $*"
  if "$@"; then echo "=== $name: clean"; else failed+=("$name"); echo "=== $name: FAILED"; fi
}

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
if [ "$which" = asan ] || [ "$which" = all ]; then
  dir="$root/asan"
  configure "$dir" "-fsanitize=address,undefined -fno-sanitize-recover=all"
  targets=(tp_tests)
  for t in "${local_suites[@]}"; do has_target "$dir" "$t" && targets+=("$t"); done
  has_target "$dir" tp_gloo_tests && targets+=(tp_gloo_tests tp_gloo_fault_peer)
  has_target "$dir" tp_mpi_tests && targets+=(tp_mpi_tests)
  cmake --build "$dir" -j "$jobs" --target "${targets[@]}"
  export ASAN_OPTIONS="abort_on_error=0:detect_stack_use_after_return=1:strict_init_order=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  run asan.tp_tests "$dir/tests/tp_tests" "${gtest_args[@]}"
  for t in "${local_suites[@]}"; do
    [ -x "$dir/tests/$t" ] && run "asan.$t" "$dir/tests/$t" "${gtest_args[@]}"
  done
  [ -x "$dir/tests/tp_gloo_tests" ] && run asan.tp_gloo_tests "$dir/tests/tp_gloo_tests" "${gtest_args[@]}"
  if [ -x "$dir/tests/tp_mpi_tests" ]; then
    for np in 1 2 3 4; do
      run "asan.tp_mpi_tests.np$np" env ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" \
        mpirun -np "$np" --oversubscribe "$dir/tests/tp_mpi_tests" "${gtest_args[@]}"
    done
  fi
fi
if [ "$which" = tsan ] || [ "$which" = all ]; then
  dir="$root/tsan"
  configure "$dir" "-fsanitize=thread"
  targets=(tp_tests)
  for t in "${local_suites[@]}"; do has_target "$dir" "$t" && targets+=("$t"); done
  cmake --build "$dir" -j "$jobs" --target "${targets[@]}"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$top/scripts/tsan.supp"
  run tsan.tp_tests "$dir/tests/tp_tests" "${gtest_args[@]}"
  for t in "${local_suites[@]}"; do
    [ -x "$dir/tests/$t" ] && run "tsan.$t" "$dir/tests/$t" "${gtest_args[@]}"
  done
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "sanitizers found problems in: ${failed[*]}"
  exit 1
fi
echo "sanitizers: all clean"

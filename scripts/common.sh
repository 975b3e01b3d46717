# Sourced by the project's scripts: paths and environment shared by build, test, demo and bench
# (the one place that sets Open MPI's and OpenBLAS's environment for them).
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${TP_BUILD_DIR:-$top/build}"
# nvcc is not on PATH by default on these machines; CUDA targets build when it is found.
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
# Open MPI as root and with more ranks than cores: scripts/mpirun.env, which ctest's mpirun tests read too.
set -a
source "$top/scripts/mpirun.env"
set +a
# OpenBLAS 0.3.21 runs AVX2 kernels on AVX-512 CPUs it does not know (Zen 4/5): half the speed.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=SkylakeX
fi

tp_build() {  # configure and build the given targets (all when none)
  "$top/scripts/install-deps.sh"
  cmake -S "$top" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" ${1:+--target "$@"}
}

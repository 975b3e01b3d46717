# Sourced by the project's scripts: paths and environment shared by build, test, demo and bench
# (the one place that sets Open MPI's environment for them; tp::Cpu picks its GEMM library itself).
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${TP_BUILD_DIR:-$top/build}"
# nvcc is not on PATH by default on these machines; CUDA targets build when it is found.
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
# Open MPI as root and with more ranks than cores: scripts/mpirun.env, which ctest's mpirun tests read too.
set -a
source "$top/scripts/mpirun.env"
set +a

# ccache (when installed; CMakeLists.txt puts it in front of the compilers) shares its cache
# between checkouts of tp at different paths, such as git worktrees.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$top}"

tp_configure() {  # configure the build directory
  cmake -S "$top" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
}
tp_compile() {  # build the given targets (all when none)
  cmake --build "$build_dir" -j "$(nproc)" ${1:+--target "$@"}
}
tp_build() {  # install what is missing, configure and build the given targets (all when none)
  "$top/scripts/install-deps.sh"
  tp_configure
  tp_compile "$@"
}

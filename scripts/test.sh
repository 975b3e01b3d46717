#!/usr/bin/env bash
# The test command: installs what is missing, builds everything (CUDA code too, when nvcc is
# present), and runs every test through ctest: in-process at world sizes 1-4 and under mpirun -np 1-4.
# Extra arguments go to ctest (e.g. -R mpi). Ends by printing where the time went.
set -euo pipefail
source "$(dirname "$0")/common.sh"
t0=$SECONDS
"$top/scripts/install-deps.sh"
ti=$SECONDS
tp_configure
t1=$SECONDS
tp_compile
t2=$SECONDS
rc=0
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@" || rc=$?
t3=$SECONDS
echo "tp: install $((ti - t0)) s, configure $((t1 - ti)) s, build $((t2 - t1)) s, tests $((t3 - t2)) s; $((t3 - t0)) s in all" \
     "on $(nproc) cores (ccache: $(command -v ccache > /dev/null && echo on || echo absent))"
exit $rc

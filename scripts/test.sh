#!/usr/bin/env bash
# The test command: installs what is missing, builds everything (CUDA code too, when nvcc is
# present), and runs every test through ctest: in-process at world sizes 1-4 and under mpirun -np 1-4.
# Extra arguments go to ctest (e.g. -R mpi).
set -euo pipefail
source "$(dirname "$0")/common.sh"
tp_build
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"

#!/usr/bin/env bash
# The main job: builds the examples and runs them on several ranks on the CPU.
#   scripts/demo.sh                 # 2 MPI ranks
#   scripts/demo.sh --np 4          # 4 ranks
#   scripts/demo.sh --backend local # ranks as threads in one process
set -euo pipefail
source "$(dirname "$0")/common.sh"
np=2
backend=mpi
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    *) echo "usage: $0 [--np N] [--backend mpi|local]" >&2; exit 2 ;;
  esac
done
tp_build seed_matmul mlp
run() {  # run an example on $np ranks of $backend
  if [ "$backend" = local ]; then "$build_dir/examples/$1" --backend local --world "$np" "${@:2}"
  else mpirun -np "$np" "$build_dir/examples/$1" --backend "$backend" "${@:2}"; fi
}
echo "== the seed's example: X A through column and row parallelism on $np ranks"
run seed_matmul
echo "== an MLP block (h -> 4h -> h) forward and backward on $np ranks, against the unsharded computation"
run mlp --tokens 128 --hidden 512

#!/usr/bin/env bash
# A job started by mpirun whose peer stops: `mpirun -np 2 train_tiny_lm --backend BACKEND --timeout 3`
# (gloo bootstrapped over MPI, or mpi itself), rank 1 suspended (SIGSTOP) mid-run. Rank 0 must fail
# with a CommError within its --timeout (so the flag must reach the backend's communicator), print
# it and exit non-zero, and mpirun must then end the job: MPI_Finalize, which waits for every rank,
# must not be called with the exception in flight. Bounded in time; kills what it started.
#
#   mpi_stopped_peer_test.sh MPIEXEC TRAIN_TINY_LM_BINARY gloo|mpi
set -u
usage="usage: mpi_stopped_peer_test.sh MPIEXEC TRAIN_TINY_LM_BINARY gloo|mpi"
mpiexec=${1:?$usage}
bin=${2:?$usage}
backend=${3:?$usage}
timeout_s=3
log=$(mktemp "${TMPDIR:-/tmp}/tp_${backend}_mpi_stop.XXXXXX")
unset TP_GLOO_STORE TP_RANK TP_WORLD_SIZE
"$mpiexec" -np 2 --oversubscribe "$bin" --backend "$backend" --timeout "$timeout_s" --steps 100000 --log-every 1 \
  --hidden 64 --heads 2 --kv-heads 2 --layers 1 --seq-len 32 --batch 4 >"$log" 2>&1 &
runner=$!
victim=
cleanup() {
  [ -n "$victim" ] && kill -CONT "$victim" 2>/dev/null
  kill -TERM "$runner" 2>/dev/null
  sleep 0.5
  kill -KILL "$runner" 2>/dev/null
  [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
  rm -f "$log"
}
trap cleanup EXIT
fail() { echo "FAILED: $*"; tail -n 30 "$log"; exit 1; }

for _ in $(seq 600); do grep -q "step *3 " "$log" && break; sleep 0.1; done
grep -q "step *3 " "$log" || fail "the job did not reach step 3 in 60 s"
# Rank 1: the child of mpirun whose environment says so.
for pid in $(pgrep -P "$runner"); do
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$pid
done
[ -n "$victim" ] || fail "cannot find rank 1 among mpirun's children"
kill -STOP "$victim"
stopped_at=$(date +%s.%N)
limit=$((timeout_s * 3 + 20))
for _ in $(seq $((limit * 10))); do kill -0 "$runner" 2>/dev/null || break; sleep 0.1; done
kill -0 "$runner" 2>/dev/null && fail "the job still runs ${limit} s after rank 1 stopped (MPI_Finalize waiting for it?)"
wait "$runner"
status=$?
took=$(echo "$(date +%s.%N) - $stopped_at" | bc)
[ "$status" -ne 0 ] || fail "mpirun exited 0 after rank 1 stopped"
communicator=$([ "$backend" = gloo ] && echo GlooCommunicator || echo MpiCommunicator)
grep -q "train_tiny_lm: .*$communicator" "$log" || fail "rank 0 did not print the $communicator's CommError"
echo "rank 1 stopped; the job ended in ${took} s with status $status (timeout ${timeout_s} s); rank 0 printed:"
grep -o "train_tiny_lm: .*$communicator.*" "$log"
exit 0

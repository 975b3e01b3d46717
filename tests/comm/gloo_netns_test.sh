#!/usr/bin/env bash
# Four ranks on two "hosts": network namespaces joined by a veth pair, meeting through a shared
# directory (gloo's FileStore) and training examples/train_tiny_lm over Gloo TCP on a TP 2 x DP 2
# mesh: the TP groups (ranks 0-1, ranks 2-3) inside each namespace, the DP groups (0 and 2, 1 and
# 3) across them, as a job places TP inside a node and DP between nodes. The losses must equal
# those of the same four ranks on one host (loopback). Then the
# peer's link is cut mid-run (ip link set down) and the survivor must fail with a CommError within
# its timeout. Bounded in time; removes what it creates. Exit 77 (skipped, with the reason) where
# namespaces cannot be made (not root, no `ip`, a container without CAP_SYS_ADMIN / CAP_NET_ADMIN).
#
# The two veth ends get 192.168.250.1/30 and .2/30, addresses that exist only inside the two
# namespaces this script creates: traffic goes between them and nowhere else.
#
#   gloo_netns_test.sh TRAIN_TINY_LM_BINARY
set -u
bin=${1:?usage: gloo_netns_test.sh TRAIN_TINY_LM_BINARY}
timeout_s=5
tag="tp$$"
ns_a="${tag}a" ns_b="${tag}b" veth_a="${tag}va" veth_b="${tag}vb"
work=$(mktemp -d "${TMPDIR:-/tmp}/tp_netns.XXXXXX")
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del "$ns_a" 2>/dev/null
  ip netns del "$ns_b" 2>/dev/null  # deleting a namespace removes its end of the veth pair, and so the pair
  rm -rf "$work"
}
trap cleanup EXIT

skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*"; for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done; exit 1; }

command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
ip netns add "$ns_a" 2>"$work/netns.err" || skip "cannot create a network namespace: $(cat "$work/netns.err")"
ip netns add "$ns_b" || skip "cannot create a second network namespace"
ip link add "$veth_a" type veth peer name "$veth_b" 2>"$work/veth.err" || skip "cannot create a veth pair: $(cat "$work/veth.err")"
ip link set "$veth_a" netns "$ns_a" && ip link set "$veth_b" netns "$ns_b" || fail "cannot move the veth ends"
ip -n "$ns_a" addr add 192.168.250.1/30 dev "$veth_a" && ip -n "$ns_b" addr add 192.168.250.2/30 dev "$veth_b" ||
  fail "cannot address the veth ends"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$veth_a" up && ip -n "$ns_b" link set "$veth_b" up || fail "cannot bring the veth pair up"

# A small model, every step logged; the same flags on one host and across the namespaces.
train=("$bin" --backend gloo --tp 2 --dp 2 --zero 1 --hidden 64 --heads 2 --kv-heads 2 --layers 1 --seq-len 32
       --batch 4 --log-every 1 --timeout "$timeout_s")

# rank NAMESPACE(- for none) HOSTNAME STORE LOG ARGS...: one rank in the background; its pid in $!
rank() {
  local r=$1 ns=$2 host=$3 store=$4 log=$5
  shift 5
  local env_=(env TP_RANK="$r" TP_WORLD_SIZE=4 TP_GLOO_STORE="$store" TP_GLOO_HOSTNAME="$host")
  if [ "$ns" = - ]; then "${env_[@]}" "${train[@]}" "$@" >"$log" 2>&1 &
  else ip netns exec "$ns" "${env_[@]}" "${train[@]}" "$@" >"$log" 2>&1 & fi
}

# wait_bounded PID SECONDS: its exit status, or 124 (and killed) if it runs longer.
wait_bounded() {
  local pid=$1 i
  for i in $(seq $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; wait "$pid" 2>/dev/null; return 124; }
  wait "$pid"
}

losses() { grep -o 'step *[0-9]* *loss [0-9.]*' "$1"; }

# 1. One host, loopback.
# all4 NAMESPACE_A NAMESPACE_B HOST_A HOST_B STORE LOGNAME ARGS...: ranks 0, 1 on A and 2, 3 on B.
all4() {
  local na=$1 nb=$2 ha=$3 hb=$4 store=$5 name=$6 r
  shift 6
  pids=()
  for r in 0 1 2 3; do
    if [ "$r" -lt 2 ]; then rank "$r" "$na" "$ha" "$store" "$work/$name$r.log" "$@"
    else rank "$r" "$nb" "$hb" "$store" "$work/$name$r.log" "$@"; fi
    pids+=("$!")
  done
  p0=${pids[0]}
}
all4 - - 127.0.0.1 127.0.0.1 "$work/store_one" one --steps 6
wait_bounded "$p0" 120 || fail "the one-host run failed"
for p in "${pids[@]:1}"; do wait_bounded "$p" 30 || fail "a rank of the one-host run failed"; done

# 2. Two namespaces, the same run.
all4 "$ns_a" "$ns_b" 192.168.250.1 192.168.250.2 "$work/store_two" two --steps 6
wait_bounded "$p0" 120 || fail "rank 0 across namespaces failed"
for p in "${pids[@]:1}"; do wait_bounded "$p" 30 || fail "a rank across namespaces failed"; done
one=$(losses "$work/one0.log") two=$(losses "$work/two0.log")
[ "$(echo "$one" | wc -l)" -ge 6 ] || fail "the one-host run logged fewer than 6 steps"
[ "$one" = "$two" ] || fail "losses differ: one host
$one
two namespaces
$two"
echo "same losses on one host and across two namespaces (TP 2 inside each, DP 2 across):"
echo "$two"

# 3. Cut the second host's link mid-run: rank 0 must fail with a CommError within its timeout.
all4 "$ns_a" "$ns_b" 192.168.250.1 192.168.250.2 "$work/store_cut" cut --steps 100000
for _ in $(seq 600); do grep -q "step *3 " "$work/cut0.log" 2>/dev/null && break; sleep 0.1; done
grep -q "step *3 " "$work/cut0.log" || fail "the long run did not reach step 3 in 60 s"
ip -n "$ns_b" link set "$veth_b" down || fail "cannot cut the link"
cut_at=$(date +%s.%N)
limit=$((timeout_s * 3 + 10))
wait_bounded "$p0" "$limit"
status=$?
[ "$status" -ne 124 ] || fail "rank 0 still ran ${limit} s after its peers' link went down"
took=$(echo "$(date +%s.%N) - $cut_at" | bc)
[ "$status" -ne 0 ] || fail "rank 0 exited 0 after its peer's link went down"
grep -q "train_tiny_lm: .*GlooCommunicator" "$work/cut0.log" || fail "rank 0 did not report a Gloo CommError"
echo "after the link was cut, rank 0 exited $status in ${took} s (timeout ${timeout_s} s):"
grep -o "train_tiny_lm: [^(]*communicator.*" "$work/cut0.log"
exit 0

#!/usr/bin/env bash
# examples/train_tiny_lm at its edges (issue 27): --save-hf into a directory whose config.json is a
# planted link (the link is replaced, its target untouched); --resume from a checkpoint at or past
# --steps (an error, exit non-zero, not "final loss 0.0000"); a run whose loss goes non-finite
# stops at once, naming the step; a resume file with a flipped bit is refused, naming the tensor;
# --precision bf16 and f16 train like fp32, another precision is refused by name.
#
#   train_tiny_lm_edges_test.sh TRAIN_TINY_LM_BINARY
set -u
bin=${1:?usage: train_tiny_lm_edges_test.sh TRAIN_TINY_LM_BINARY}
root=$(mktemp -d "${TMPDIR:-/tmp}/tp_tiny_lm_edges.XXXXXX")
trap 'rm -rf "$root"' EXIT
small=(--backend local --world 2 --timeout 60 --hidden 32 --heads 2 --kv-heads 2 --layers 1 --seq-len 16 --batch 2
       --log-every 1)
failures=0
fail() {
  echo "FAILED: $1"
  tail -n 5 "$2"
  failures=$((failures + 1))
}

# 1. --save-hf through a planted config.json link.
mkdir -p "$root/hf"
echo precious >"$root/victim"
ln -s "$root/victim" "$root/hf/config.json"
if timeout 120 "$bin" "${small[@]}" --arch llama --steps 2 --save-hf "$root/hf" >"$root/save.log" 2>&1 &&
  [ "$(cat "$root/victim")" = precious ] && [ ! -L "$root/hf/config.json" ] &&
  grep -q '"model_type": "llama"' "$root/hf/config.json"; then
  echo "ok save-hf: the planted link was replaced, its target untouched"
else
  fail "save-hf wrote through the planted config.json link (or failed)" "$root/save.log"
fi

# 2. A checkpoint at --steps, resumed with the same --steps: nothing to train.
timeout 120 "$bin" "${small[@]}" --steps 3 --checkpoint "$root/ck" >"$root/train.log" 2>&1 ||
  fail "the run that writes the checkpoint failed" "$root/train.log"
timeout 120 "$bin" "${small[@]}" --steps 3 --resume "$root/ck" >"$root/past.log" 2>&1
status=$?
if [ "$status" -ne 0 ] && grep -q "at step 3, at or past the --steps 3; nothing to train" "$root/past.log"; then
  echo "ok resume at --steps: exit $status, $(grep -o 'the checkpoint is at step.*train' "$root/past.log")"
else
  fail "resuming at --steps exited $status without saying why" "$root/past.log"
fi

# 3. A learning rate that sends the loss to NaN or Inf: stopped at that step.
timeout 120 "$bin" "${small[@]}" --steps 50 --lr 1e30 --warmup 1 --clip 1e30 >"$root/nan.log" 2>&1
status=$?
# The trainer stops at the first step whose gradients are not finite, or the example at the first
# loss that is not: either way an error naming the step, and no "final loss".
diverged='step [0-9]+: (the loss is (nan|inf|-nan); stopping|the global gradient norm is (nan|inf|-nan))'
if [ "$status" -ne 0 ] && grep -Eq "$diverged" "$root/nan.log" && ! grep -q "final loss" "$root/nan.log"; then
  echo "ok diverged run: exit $status, $(grep -Eo "$diverged" "$root/nan.log" | head -1)"
else
  fail "a diverged run did not stop with an error naming the step (exit $status)" "$root/nan.log"
fi

# 4. One bit flipped in the resume file's last data byte: refused, naming the tensor.
resume_file=$(ls "$root"/ck/step-*/resume.safetensors | head -1)
size=$(stat -c %s "$resume_file")
byte=$(od -An -tu1 -j $((size - 2)) -N1 "$resume_file" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 4)))" | dd of="$resume_file" bs=1 seek=$((size - 2)) conv=notrunc status=none
timeout 120 "$bin" "${small[@]}" --steps 6 --resume "$root/ck" >"$root/flip.log" 2>&1
status=$?
if [ "$status" -ne 0 ] && grep -q "has checksum .*, but __metadata__ records" "$root/flip.log"; then
  echo "ok bit flip: exit $status, $(grep -o "tensor '[^']*' has checksum" "$root/flip.log" | head -1)"
else
  fail "a flipped bit in the resume file went unnoticed (exit $status)" "$root/flip.log"
fi

# 5. --precision: bf16 and f16 train (the loss falls as fp32's does; f16 shows its loss scale and
#    skipped steps), anything else is refused by name.
final_loss() { sed -n 's/^done: .*final loss \([0-9.]*\).*/\1/p' "$1"; }
for p in fp32 bf16 f16; do
  timeout 120 "$bin" "${small[@]}" --steps 30 --log-every 10 --precision "$p" >"$root/$p.log" 2>&1 ||
    fail "--precision $p failed" "$root/$p.log"
done
first=$(sed -En 's/^step +1  loss ([0-9.]*).*/\1/p' "$root/fp32.log")
if grep -q "precision bf16 (fp32 main gradients and master weights)" "$root/bf16.log" &&
  grep -Eq "loss scale [0-9.e+]+  skipped [0-9]+" "$root/f16.log" &&
  awk -v a="$(final_loss "$root/fp32.log")" -v b="$(final_loss "$root/bf16.log")" -v c="$(final_loss "$root/f16.log")" \
    -v f="${first:-0}" 'BEGIN { exit !(b < f && c < f && (b - a) ^ 2 < (0.05 * a) ^ 2 && (c - a) ^ 2 < (0.05 * a) ^ 2) }'; then
  echo "ok precision: final losses fp32 $(final_loss "$root/fp32.log"), bf16 $(final_loss "$root/bf16.log"), f16 $(final_loss "$root/f16.log")"
else
  fail "--precision bf16/f16 did not train like fp32 (first loss ${first:-?})" "$root/f16.log"
fi
if ! timeout 60 "$bin" "${small[@]}" --steps 2 --precision fp8 >"$root/fp8.log" 2>&1 && grep -q "fp8" "$root/fp8.log"; then
  echo "ok precision fp8: refused by name"
else
  fail "--precision fp8 was not refused by name" "$root/fp8.log"
fi

[ "$failures" -eq 0 ] || exit 1
echo "all train_tiny_lm edges handled"

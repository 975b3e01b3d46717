#!/usr/bin/env bash
# examples/finetune on the command line: a tiny Llama checkpoint with Llama 3's tokenizer
# (tests/golden/chat/llama3-chat) fine-tuned on prompt/completion JSONL at TP 2, with its progress
# lines, step checkpoints, a resume at TP 1 x DP 2 (ZeRO-1, micro-batches) and --save-hf; then examples/generate --chat on the
# saved directory gives the same greedy ids at TP 1 and 2; bf16 and f16 fine-tune; bad data and an
# unknown precision are refused by name.
#   finetune_then_generate_test.sh <finetune> <generate> <source dir> <work dir>
set -euo pipefail
finetune=$1 generate=$2 src=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
model=$src/golden/chat/llama3-chat data=$src/examples/data/finetune.jsonl
common=(--model "$model" --data "$data" --global-batch-size 4 --lr 1e-2 --min-lr 1e-3 --lr-warmup-iters 1 --log-interval 2)
"$finetune" --backend local --world 2 "${common[@]}" --train-iters 6 --save "$work/ckpt" --save-interval 2 \
  --keep-checkpoints 2 --save-hf "$work/hf" | tee "$work/ft.log"
grep -Eq '^step +6/6  loss [0-9.]+  lr [0-9.e+-]+  grad_norm [0-9.]+  [0-9]+ tokens/s  ETA 0m00s$' "$work/ft.log"
[ "$(ls "$work/ckpt")" = "$(printf 'step-000004\nstep-000006')" ]  # every 2 steps, the newest 2 kept
test -f "$work/hf/model.safetensors" && test -f "$work/hf/config.json" && test -f "$work/hf/tokenizer.json"
# The loss of the last steps is below the first step's.
first=$(grep -E '^step +1/' "$work/ft.log" | sed 's/.*loss \([0-9.]*\).*/\1/')
last=$(grep -E '^step +6/' "$work/ft.log" | sed 's/.*loss \([0-9.]*\).*/\1/')
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || { echo "FAIL: loss $first -> $last did not fall" >&2; exit 1; }

# Resumed at TP 1 x DP 2 with ZeRO-1 and 2 micro-batches from the latest step, to step 8.
"$finetune" --backend local --world 2 --tp 1 --dp 2 --zero 1 --micro-batches 2 --recompute full "${common[@]}" \
  --train-iters 8 --load "$work/ckpt" | tee "$work/resume.log"
grep -q "world 2 = TP 1 x DP 2" "$work/resume.log"
grep -q "steps 6 of 8" "$work/resume.log"
grep -Eq '^step +8/8 ' "$work/resume.log"

ids() {  # ids <world>: the greedy ids of a chat turn on the saved directory
  "$generate" --backend local --world "$1" --model "$work/hf" --chat --prompt "Who made the heaven and the earth?" \
    --max-new-tokens 12 > "$work/gen$1.log"
  cat "$work/gen$1.log" >&2
  grep '^ids: ' "$work/gen$1.log"
}
[ "$(ids 1)" = "$(ids 2)" ] || { echo "FAIL: generate differs between TP 1 and 2 on the fine-tuned model" >&2; exit 1; }

# Data that is not prompt/completion JSONL is refused, naming the file and the line.
printf '{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n' > "$work/bad.jsonl"
if "$finetune" --backend local --world 1 --model "$model" --data "$work/bad.jsonl" 2> "$work/err.log"; then
  echo "FAIL: bad JSONL accepted" >&2; exit 1
fi
grep -q "bad.jsonl:2" "$work/err.log"
# bf16 and f16 (with its loss scale and skipped steps in the progress line) fine-tune at TP 2;
# another precision is refused by name, a world that is not tp x dp too.
for p in bf16 f16; do
  "$finetune" --backend local --world 2 "${common[@]}" --train-iters 2 --precision "$p" | tee "$work/$p.log"
  grep -q "precision $p (fp32 main gradients and master weights)" "$work/$p.log"
  grep -Eq '^step +2/2  loss [0-9.]+ ' "$work/$p.log"
done
grep -Eq '^step +2/2  .*  loss scale [0-9.e+]+  skipped [0-9]+$' "$work/f16.log"
if "$finetune" --backend local --world 1 --model "$model" --data "$data" --precision fp8 2> "$work/err.log"; then
  echo "FAIL: --precision fp8 accepted" >&2; exit 1
fi
grep -q "fp8" "$work/err.log"
if "$finetune" --backend local --world 2 --tp 2 --dp 2 --model "$model" --data "$data" 2> "$work/err.log"; then
  echo "FAIL: tp 2 x dp 2 on a world of 2 accepted" >&2; exit 1
fi
grep -q "tp 2 x dp 2" "$work/err.log"
echo "finetune_then_generate: OK"

#!/usr/bin/env bash
# train_tiny_lm --arch llama --save-hf, then examples/generate on what it wrote: the text appears,
# greedy generation is the same at TP 1, 2 and 4, and a bad checkpoint is refused by name.
#   train_then_generate_test.sh <train_tiny_lm> <generate> <work dir>
set -euo pipefail
train=$1 generate=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
"$train" --backend local --world 2 --arch llama --steps 40 --log-every 20 --save-hf "$work/hf" > "$work/train.log"
cat "$work/train.log"
test -f "$work/hf/config.json"
test -f "$work/hf/model.safetensors"

gen() {  # gen <world> [options]: the generated text of a greedy run (the lines between the markers)
  local world=$1; shift
  "$generate" --backend local --world "$world" --model "$work/hf" --prompt "And God said" --max-new-tokens 24 "$@" \
    > "$work/gen$world.log"
  cat "$work/gen$world.log" >&2
  grep -q "^decode: 23 tokens" "$work/gen$world.log"
  sed -n '/^--- generated/,/^---$/p' "$work/gen$world.log"
}
one=$(gen 1)
two=$(gen 2)
four=$(gen 4)
if [ "$one" != "$two" ] || [ "$one" != "$four" ]; then
  echo "FAIL: greedy text differs between TP degrees" >&2
  printf 'TP 1:\n%s\nTP 2:\n%s\nTP 4:\n%s\n' "$one" "$two" "$four" >&2
  exit 1
fi
# Sampling runs too, and a seed repeats itself.
a=$(gen 2 --temperature 0.8 --top-p 0.95 --seed 3)
b=$(gen 1 --temperature 0.8 --top-p 0.95 --seed 3)
[ "$a" = "$b" ] || { echo "FAIL: the same seed sampled different text at TP 2 and TP 1" >&2; exit 1; }

# A directory without a checkpoint, and a config that does not match the tensors, are refused by name.
mkdir -p "$work/empty"
if "$generate" --backend local --world 1 --model "$work/empty" --prompt x 2> "$work/err.log"; then
  echo "FAIL: an empty directory was accepted" >&2; exit 1
fi
grep -q "config.json" "$work/err.log"
mkdir -p "$work/bad"
cp "$work/hf/model.safetensors" "$work/bad/"
sed 's/"intermediate_size": [0-9]*/"intermediate_size": 100/' "$work/hf/config.json" > "$work/bad/config.json"
if "$generate" --backend local --world 2 --model "$work/bad" --prompt x 2> "$work/err.log"; then
  echo "FAIL: a config that does not match the tensors was accepted" >&2; exit 1
fi
cat "$work/err.log" >&2
grep -q "gate_proj.weight" "$work/err.log"
echo "train_then_generate: OK"

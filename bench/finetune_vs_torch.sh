#!/usr/bin/env bash
# examples/finetune's tokens/s beside PyTorch eager fine-tuning the same model shape on the same
# machine (bench/peers/torch_finetune_peer.py), one thread per rank: a random-initialised Llama of
# the given shape with Llama 3's tokenizer layout (tests/text/golden/llama3), sequences of SEQ tokens,
# BATCH per step, AdamW and clipping on both sides. tp runs at TP 1 and 2 (local backend: ranks as
# threads); PyTorch is one process with one intra-op thread.
#   [TP_FINETUNE=build/examples/finetune] bench/finetune_vs_torch.sh PYTHON_WITH_TORCH_AND_TRANSFORMERS [HIDDEN LAYERS HEADS KV_HEADS FFN SEQ BATCH STEPS]
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=$1
hidden=${2:-256} layers=${3:-4} heads=${4:-8} kv=${5:-4} ffn=${6:-688} seq=${7:-128} batch=${8:-4} steps=${9:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" "$top/bench/peers/torch_finetune_peer.py" make "$work/model" 1203 "$hidden" "$layers" "$heads" "$kv" "$ffn" \
  "$top/tests/text/golden/llama3"
# Text enough for steps * batch windows of seq + 1 tokens (Genesis, repeated).
for _ in 1 2 3 4; do cat "$top/examples/data/genesis.txt"; done > "$work/data.txt"
echo "shape: hidden $hidden, $layers layers, $heads heads over $kv kv heads, ffn $ffn, vocabulary 1203; $batch x $seq tokens per step, $steps steps"
for world in 1 2; do
  "${TP_FINETUNE:-$top/build/examples/finetune}" --backend local --world "$world" --threads 1 --model "$work/model" --data "$work/data.txt" \
    --seq-length "$seq" --global-batch-size "$batch" --train-iters $((steps + 2)) --lr 1e-4 --lr-warmup-iters 1 \
    --log-interval 1000 > "$work/tp$world.log"
  # The steady rate: the last progress line covers steps 2 .. steps + 2 (the first line is step 1 alone).
  rate=$(grep '^step' "$work/tp$world.log" | tail -1 | sed 's/.* \([0-9]*\) tokens\/s.*/\1/')
  echo "tp finetune local TP $world (1 thread per rank): $rate tokens/s"
done
"$py" "$top/bench/peers/torch_finetune_peer.py" run "$work/model" "$seq" "$batch" "$steps"

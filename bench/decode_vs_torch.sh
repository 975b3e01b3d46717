#!/usr/bin/env bash
# tp_bench_decode's decode and prefill tokens/s beside PyTorch eager generating with transformers'
# LlamaForCausalLM of the same shape (bench/peers/torch_decode_peer.py) on the same machine, one
# thread each (tp: --backend local --world 1 --threads 1; PyTorch: one intra-op thread), same
# prompt, random weights, float32, tied embeddings. Runs alternate tp, PyTorch, tp, PyTorch so that
# both see the same load; each run is the best of REPS generations, and the summary the best runs.
#   [TP_BENCH_DECODE=build/bench/tp_bench_decode] [TP_TORCH_VENV=dir] bench/decode_vs_torch.sh \
#     [VOCAB HIDDEN LAYERS HEADS KV_HEADS FFN PROMPT NEW_TOKENS REPS]
# The defaults are tp_bench_decode's 100M-parameter model. PyTorch 2.x and transformers come from
# the venv TP_TORCH_VENV (default ~/.cache/tp/torch-venv, scripts/bench.sh's), installed there with
# pip when missing; when that fails the comparison is skipped with a message (exit 0).
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vocab=${1:-32000} hidden=${2:-768} layers=${3:-12} heads=${4:-12} kv=${5:-4} ffn=${6:-2048}
prompt=${7:-128} new_tokens=${8:-32} reps=${9:-3}
bin=${TP_BENCH_DECODE:-$top/build/bench/tp_bench_decode}
venv=${TP_TORCH_VENV:-$HOME/.cache/tp/torch-venv}
py=$venv/bin/python

if ! "$py" -c "import torch, transformers" 2>/dev/null; then
  echo "decode_vs_torch.sh: installing PyTorch 2.x and transformers into $venv (once; a few GB)" >&2
  if ! { { [ -x "$py" ] || python3 -m venv "$venv"; } &&
         "$venv/bin/pip" install -q "torch>=2,<3" numpy transformers safetensors; } >&2; then
    echo "decode_vs_torch.sh: skipped: pip could not install PyTorch 2.x and transformers into $venv"
    exit 0
  fi
fi
[ -x "$bin" ] || { echo "decode_vs_torch.sh: $bin is not built (tp_compile tp_bench_decode)" >&2; exit 1; }

echo "shape: vocabulary $vocab (tied), hidden $hidden, $layers layers, $heads heads over $kv kv heads, ffn $ffn;" \
     "prompt $prompt tokens, $new_tokens new tokens, best of $reps; one thread each"
best_tp_decode=0 best_tp_prefill=0 best_torch_decode=0 best_torch_prefill=0
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
for turn in 1 2; do
  row=$(OMP_NUM_THREADS=1 "$bin" --backend local --world 1 --threads 1 --vocab "$vocab" --hidden "$hidden" \
          --layers "$layers" --heads "$heads" --kv-heads "$kv" --ffn "$ffn" --prompt "$prompt" \
          --new-tokens "$new_tokens" --reps "$reps" --triad-mb 64 | tail -1)
  # | TP | backend | clone | parameters | weights | triad | decode tok/s | limit | ratio | sgemm | prefill tok/s | limit | ratio |
  tp_decode=$(echo "$row" | awk -F'|' '{ gsub(/ /, "", $8); print $8 }')
  tp_prefill=$(echo "$row" | awk -F'|' '{ gsub(/ /, "", $12); print $12 }')
  echo "tp turn $turn: decode $tp_decode tokens/s, prefill $tp_prefill tokens/s ($row)"
  line=$("$py" "$top/bench/peers/torch_decode_peer.py" "$vocab" "$hidden" "$layers" "$heads" "$kv" "$ffn" \
           "$prompt" "$new_tokens" "$reps")
  echo "torch turn $turn: $line"
  torch_decode=$(echo "$line" | sed 's/.*decode_tokens_per_s=\([0-9.]*\).*/\1/')
  torch_prefill=$(echo "$line" | sed 's/.*prefill_tokens_per_s=\([0-9.]*\).*/\1/')
  best_tp_decode=$(max "$best_tp_decode" "$tp_decode")
  best_tp_prefill=$(max "$best_tp_prefill" "$tp_prefill")
  best_torch_decode=$(max "$best_torch_decode" "$torch_decode")
  best_torch_prefill=$(max "$best_torch_prefill" "$torch_prefill")
done
awk -v td="$best_tp_decode" -v tp="$best_tp_prefill" -v pd="$best_torch_decode" -v pp="$best_torch_prefill" 'BEGIN {
  printf "| decode tok/s tp | PyTorch | tp / PyTorch | prefill tok/s tp | PyTorch | tp / PyTorch |\n"
  printf "|---|---|---|---|---|---|\n"
  printf "| %.1f | %.1f | %.2f | %.0f | %.0f | %.2f |\n", td, pd, td / pd, tp, pp, tp / pp
}'

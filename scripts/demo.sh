#!/usr/bin/env bash
# The main job: builds the examples, trains a tiny Llama-style language model on several ranks on
# the CPU (under 40 s with 2 ranks on a quiet 2-core machine), saves it as a Hugging Face
# checkpoint and generates a short sample from it at the same TP degree; after the quick seed and
# MLP examples.
#   scripts/demo.sh                  # 2 MPI ranks
#   scripts/demo.sh --np 4           # 4 ranks
#   scripts/demo.sh --backend local  # ranks as threads in one process (gloo: Gloo over TCP)
#   scripts/demo.sh --only-train     # skip the seed and MLP examples
#   scripts/demo.sh -- --steps 100   # arguments after -- go to train_tiny_lm (--arch gpt2: the GPT-2 style
#                                    # model, which has no Hugging Face form, so no sample at the end)
set -euo pipefail
source "$(dirname "$0")/common.sh"
np=2
backend=mpi
examples=1
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --only-train) examples=0; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--np N] [--backend mpi|gloo|local] [--only-train] [-- train_tiny_lm options]" >&2; exit 2 ;;
  esac
done
if [ $((4 % np)) -ne 0 ] && [[ " $* " != *" --heads"* ]]; then
  # Checked here, before the examples run, so the error comes first rather than after a minute.
  echo "demo.sh: the tiny model's 4 attention heads split evenly over 1, 2 or 4 ranks, not $np;" \
       "for $np ranks give it heads that $np divides, e.g. -- --heads 6 --kv-heads 3 --hidden 192" >&2
  exit 2
fi
tp_build seed_matmul mlp train_tiny_lm generate
run_on() {  # run_on N EXAMPLE ARGS...: an example on N ranks of $backend
  if [ "$backend" = local ]; then "$build_dir/examples/$2" --backend local --world "$1" "${@:3}"
  else mpirun -np "$1" "$build_dir/examples/$2" --backend "$backend" "${@:3}"; fi
}
run() { run_on "$np" "$@"; }
if [ "$examples" = 1 ]; then
  seed_np=$((np < 2 ? np : 2))  # the seed's A has two columns (and two rows of X A): two ranks at most
  echo "== the seed's example: X A through column and row parallelism on $seed_np ranks"
  run_on "$seed_np" seed_matmul
  echo "== an MLP block (h -> 4h -> h) forward and backward on $np ranks, against the unsharded computation"
  run mlp --tokens 128 --hidden 512
fi
hf="$build_dir/tiny_lm_hf"
arch=llama
for a in "$@"; do  # `-- --arch gpt2` asks for the GPT-2 style model
  if [ "$a" = gpt2 ] || [ "$a" = --arch=gpt2 ]; then arch=gpt2; fi
done
echo "== a tiny byte-level Llama-style model trained on Genesis on $np ranks (checkpoint in $build_dir/tiny_lm_checkpoint)"
rm -rf "$hf"
if [ "$arch" = llama ]; then
  run train_tiny_lm --arch llama --log-every 100 --checkpoint "$build_dir/tiny_lm_checkpoint" --save-hf "$hf" "$@"
  echo "== a sample from it ($hf, a Hugging Face Llama checkpoint) on $np ranks"
  run generate --model "$hf" --prompt "And God said" --max-new-tokens 52 --temperature 0.8 --top-p 0.95 --seed 1
else
  run train_tiny_lm --log-every 100 --checkpoint "$build_dir/tiny_lm_checkpoint" "$@"
fi

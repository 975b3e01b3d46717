#!/usr/bin/env bash
# Hostile Hugging Face directories through examples/generate (issue 27), made here at test time
# from the golden Llama checkpoint: each run must end within 30 s, under a 4 GiB address-space
# limit, exit 1 (not hang, not crash, not exit 0) and print an error naming the file and the key
# or value. A directory with a well-formed tokenizer.json (a "<0xZZ>" piece included) generates.
#
#   hostile_directories_test.sh GENERATE_BINARY GOLDEN_LLAMA_DIR
set -u
bin=${1:?usage: hostile_directories_test.sh GENERATE_BINARY GOLDEN_LLAMA_DIR}
golden=${2:?usage: hostile_directories_test.sh GENERATE_BINARY GOLDEN_LLAMA_DIR}
root=$(mktemp -d "${TMPDIR:-/tmp}/tp_hostile_dirs.XXXXXX")
trap 'rm -rf "$root"' EXIT
failures=0

# A copy of the golden directory named $1, config.json edited by the sed expression $2 (if any).
make_dir() {
  mkdir -p "$root/$1"
  cp "$golden/model.safetensors" "$root/$1/"
  sed -e "${2:-}" "$golden/config.json" >"$root/$1/config.json"
}

# expect NAME EXPECTED_TEXT [generate arguments...]: generate on $root/NAME must fail with a
# message holding EXPECTED_TEXT (and the directory's name), in time and memory.
expect() {
  local name=$1 text=$2
  shift 2
  local log="$root/$name.log" start status
  start=$(date +%s.%N)
  (ulimit -v 4194304; exec timeout -s KILL 30 "$bin" --backend local --world 1 --model "$root/$name" \
    --prompt-ids "1 2 3" --max-new-tokens 2 "$@") >"$log" 2>&1
  status=$?
  local took
  took=$(echo "$(date +%s.%N) - $start" | bc)
  if [ "$status" -ne 1 ]; then
    echo "FAILED $name: exit status $status after ${took} s (137: killed at 30 s or by memory), expected 1"
    tail -n 5 "$log"
    failures=$((failures + 1))
  elif ! grep -qF -- "$text" "$log" || ! grep -qF -- "$name" "$log"; then
    echo "FAILED $name: the error does not name '$text' and the directory:"
    tail -n 5 "$log"
    failures=$((failures + 1))
  else
    printf 'ok %-22s %5.2f s  %s\n' "$name" "$took" "$(grep -m1 'generate:' "$log" | cut -c1-160)"
  fi
}

make_dir fifo_config && rm "$root/fifo_config/config.json" && mkfifo "$root/fifo_config/config.json"
expect fifo_config "config.json: is a FIFO"
make_dir dir_config && rm "$root/dir_config/config.json" && mkdir "$root/dir_config/config.json"
expect dir_config "config.json: is a directory"
make_dir zero_config && ln -sf /dev/zero "$root/zero_config/config.json"
expect zero_config "config.json: is a character device"
make_dir big_config && truncate -s 2G "$root/big_config/config.json"
expect big_config "over the limit of 67108864 bytes"
make_dir deep_config && head -c 10000000 /dev/zero | tr '\0' '[' >"$root/deep_config/config.json"
expect deep_config "nests JSON deeper than 32 levels"
make_dir typed_config 's/"num_attention_heads": 4/"num_attention_heads": "4"/'
expect typed_config 'num_attention_heads: expected an integer, got string "4"'
make_dir layers_config 's/"num_hidden_layers": 2/"num_hidden_layers": 100000/'
expect layers_config "config.json gives 100000 layers"
make_dir hidden_config 's/"hidden_size": 24/"hidden_size": 1099511627776/'
expect hidden_config "hidden_size: 1099511627776 is above 2147483647"
make_dir ffn_config 's/"intermediate_size": 40/"intermediate_size": 4611686018427387904/'
expect ffn_config "intermediate_size: 4611686018427387904 is above 2147483647"
make_dir fewer_layers 's/"num_hidden_layers": 2/"num_hidden_layers": 1/'
expect fewer_layers "gives 1 layers (num_hidden_layers / n_layer), but the checkpoint holds 2"

make_dir long_generation
expect long_generation "past the model's context of 64 positions" --max-new-tokens 1000000000

make_dir fifo_tokenizer && mkfifo "$root/fifo_tokenizer/tokenizer.json"
expect fifo_tokenizer "tokenizer.json: is a FIFO"
make_dir zero_tokenizer && ln -s /dev/zero "$root/zero_tokenizer/tokenizer.json"
expect zero_tokenizer "tokenizer.json: is a character device"
make_dir text_tokenizer && echo "not json at all" >"$root/text_tokenizer/tokenizer.json"
expect text_tokenizer "tokenizer.json is not valid JSON"
make_dir typed_tokenizer && echo '{"model": {"type": "BPE", "merges": [], "vocab": {"a": "1"}}}' >"$root/typed_tokenizer/tokenizer.json"
expect typed_tokenizer 'model.vocab["a"]: expected an integer, got string "1"'
make_dir added_tokenizer &&
  echo '{"model": {"type": "BPE", "merges": [], "vocab": {"a": 1}}, "added_tokens": [{"id": "x", "content": "b"}]}' >"$root/added_tokenizer/tokenizer.json"
expect added_tokenizer 'added_tokens[0].id: expected an integer, got string "x"'
make_dir deep_tokenizer && head -c 1000000 /dev/zero | tr '\0' '[' >"$root/deep_tokenizer/tokenizer.json"
expect deep_tokenizer "nests JSON deeper than 32 levels"

# A well-formed tokenizer.json whose vocabulary has a "<0xZZ>" piece (not a byte: text) generates.
make_dir good_tokenizer
{
  printf '{"model": {"type": "BPE", "merges": [], "vocab": {'
  for i in $(seq 0 65); do printf '"t%d": %d, ' "$i" "$i"; done
  printf '"<0xZZ>": 66}}}\n'
} >"$root/good_tokenizer/tokenizer.json"
if (ulimit -v 4194304; exec timeout -s KILL 30 "$bin" --backend local --world 1 --model "$root/good_tokenizer" \
  --prompt-ids "66 1 2" --max-new-tokens 3) >"$root/good.log" 2>&1 && grep -qF "<0xZZ> t1 t2" "$root/good.log"; then
  echo "ok good_tokenizer: generated, the prompt decoded as <0xZZ> t1 t2 (no decoder: pieces joined by spaces, as the tokenizers package does)"
else
  echo "FAILED good_tokenizer:"
  tail -n 5 "$root/good.log"
  failures=$((failures + 1))
fi

[ "$failures" -eq 0 ] || { echo "$failures hostile directories not handled"; exit 1; }
echo "all hostile directories refused by name"

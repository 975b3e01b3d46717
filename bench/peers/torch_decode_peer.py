#!/usr/bin/env python3
"""The PyTorch peer of tp_bench_decode: the same generation, written the way a transformers user
would (PyTorch eager, one process, one intra-op thread: tp's ranks run one BLAS thread each), for
bench/decode_vs_torch.sh.

  torch_decode_peer.py VOCAB HIDDEN LAYERS HEADS KV_HEADS FFN PROMPT NEW_TOKENS REPS
      a random-initialised LlamaForCausalLM of that shape (tied embeddings, float32), greedy: the
      prompt in one forward through the KV cache (logits of the last position only, as generate()
      asks for them), then NEW_TOKENS - 1 forwards of one token each; the best of REPS after a
      warm-up run. Prints one line
        torch source=pypi torch=VERSION transformers=VERSION threads=1 prefill_tokens_per_s=.. decode_tokens_per_s=..
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"  # before torch loads its BLAS

import sys
import time
import warnings

import torch


def main(vocab, hidden, layers, heads, kv_heads, ffn, prompt, new_tokens, reps):
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    # past_key_values is deprecated (not gone) in transformers 5; the one name every 4.x and 5.x takes.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn,
                         max_position_embeddings=max(2048, prompt + new_tokens), tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    ids = (torch.arange(prompt, dtype=torch.long) * 7919 % vocab).unsqueeze(0)  # tp_bench_decode's prompt
    best_prefill = best_decode = float("inf")
    with torch.inference_mode():
        for r in range(reps + 1):  # the first run warms up
            cache = DynamicCache()
            t0 = time.perf_counter()
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            if r > 0:
                best_prefill = min(best_prefill, t1 - t0)
                best_decode = min(best_decode, t2 - t1)
    print(f"torch source=pypi torch={torch.__version__} transformers={transformers.__version__} "
          f"threads={torch.get_num_threads()} prefill_tokens_per_s={prompt / best_prefill:.1f} "
          f"decode_tokens_per_s={(new_tokens - 1) / best_decode:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 10:
        sys.exit(__doc__)
    main(*(int(a) for a in sys.argv[1:]))

#!/usr/bin/env python3
"""The PyTorch peer of examples/finetune: the same fine-tuning step, written the way a transformers
user would (PyTorch eager, one process, one intra-op thread: tp's ranks run one BLAS thread each),
for bench/finetune_vs_torch.sh.

  torch_finetune_peer.py make DIR VOCAB HIDDEN LAYERS HEADS KV_HEADS FFN TOKENIZER_DIR
      writes a random-initialised LlamaForCausalLM of that shape to DIR (with the tokenizer files
      of TOKENIZER_DIR), the checkpoint both sides fine-tune
  torch_finetune_peer.py run DIR SEQ BATCH STEPS
      fine-tunes it: each step BATCH sequences of SEQ tokens (random ids, every token counted),
      forward, cross entropy, backward, clip_grad_norm_(1.0), AdamW; prints one line
        torch source=pypi torch=VERSION threads=1 tokens_per_s=.. (median step, after 2 warmup steps)
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"  # before torch loads its BLAS

import shutil
import statistics
import sys
import time

import torch


def make(d, vocab, hidden, layers, heads, kv_heads, ffn, tokenizer_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tokenizer_dir, f)):
            shutil.copyfile(os.path.join(tokenizer_dir, f), os.path.join(d, f))


def run(d, seq, batch, steps):
    from transformers import LlamaForCausalLM
    torch.set_num_threads(1)
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 2):
        ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1), generator=g)
        t0 = time.perf_counter()
        out = model(input_ids=ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    print(f"torch source=pypi torch={torch.__version__} threads=1 tokens_per_s={batch * seq / statistics.median(times):.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], *map(int, sys.argv[3:9]), sys.argv[9])
    else:
        run(sys.argv[2], *map(int, sys.argv[3:6]))

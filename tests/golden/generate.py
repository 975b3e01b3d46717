#!/usr/bin/env python3
"""Writes the golden files tp's model tests read (tests/models/): small random-initialised Hugging
Face checkpoints and what transformers computes on them.

Run by hand where torch and transformers are installed (tests/golden/README.md); CI only reads the
output. For each model, a directory <name>/ with

  config.json, model.safetensors   the checkpoint, as save_pretrained writes it (float32 weights)
  golden.safetensors               inputs and transformers' results:
    input_ids [batch, seq] I64, token_type_ids [batch, seq] I64 (bert)
    labels [batch * seq] I64       next token within each sequence, -100 at each sequence's end
                                   (transformers' causal-LM loss, decoders)
    grad_output [batch * seq, hidden] F64   bert: the loss is sum(last_hidden_state * grad_output)
    logits | hidden                [batch * seq, vocab | hidden], F64 and (".f32") F32
    loss [1]                       F64 and F32 (".f32")
    grad.<tensor>                  F64 gradient of the loss for every tensor of model.safetensors,
                                   in its layout (tied weights: the sum of both uses)
    prompt [1, p] I64, generated [32] I64   decoders: 32 greedy tokens of model.generate (KV
                                   cache), the same in float64 and float32 (checked here)
    packed_ids [1, 8] I64, packed_lengths [2] I64, packed_logits [8, vocab] F64
                                   decoders: sequences of 5 and 3 tokens, each run alone
    attention_mask [batch, seq] I64, masked_hidden [batch * seq, hidden] F64
                                   bert: the second sequence's last 3 tokens are padding

The float64 results are transformers' modules run in float64, except where transformers computes
in float32 whatever the model's dtype (Llama/Qwen2's RMSNorm, rotary angles and attention softmax
"upcast" to float32, and their logits cast with .float() before the loss, which for a float64
model are downcasts): `exact_float64` lets those compute in float64 so the double goldens are
accurate to ~1e-15. The float32 results use transformers
unchanged.
"""

import argparse
import contextlib
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
import transformers
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

BATCH, SEQ, PROMPT, NEW_TOKENS = 2, 8, 5, 32
PACKED = [5, 3]  # lengths of the variable-length batch


def models():
    """name -> (model class, config). Sizes: tiny, and chosen so that the heads split over the
    world sizes the tests run (gpt2/bert 12 heads: 1-4; llama 4 heads over 2 kv heads: 1, 2, 4,
    kv heads replicated at 4; qwen2 6 heads over 1 kv head: 1-3, replicated), with a vocabulary
    and an ffn that split unevenly over 3 and 4."""
    common = dict(vocab_size=67, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return {
        "gpt2": (GPT2LMHeadModel, GPT2Config(n_embd=24, n_layer=2, n_head=12, n_inner=40, n_positions=48,
                                             activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                             attn_pdrop=0.0, **common)),
        "llama": (LlamaForCausalLM, LlamaConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                                num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                                                tie_word_embeddings=True, **common)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                                num_attention_heads=6, num_key_value_heads=1,
                                                max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000.0,
                                                tie_word_embeddings=False, use_sliding_window=False, **common)),
        "bert": (BertModel, BertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=12,
                                       intermediate_size=40, max_position_embeddings=48, type_vocab_size=2,
                                       hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                       layer_norm_eps=1e-12, **common)),
    }


def make_model(cls, config):
    model = cls(config, add_pooling_layer=False) if cls is BertModel else cls(config)
    # Non-trivial norms and biases: transformers starts them at 1 and 0, which would hide a swap.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * (0.2 if "norm" in name.lower() or "ln" in name else 0.1))
            else:
                p.normal_(0.0, 0.3)  # large enough that the logits are far from uniform
    return model.eval()


@contextlib.contextmanager
def exact_float64():
    """Lets transformers' float32 upcasts stay in float64 for a float64 model (see the module doc)."""
    saved = []

    def patch(owner, attr, value):
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    softmax = torch.nn.functional.softmax

    def softmax64(x, dim=None, _stacklevel=3, dtype=None):
        if dtype == torch.float32 and x.dtype == torch.float64:
            dtype = torch.float64
        return softmax(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    def rms_norm(self, h):
        if h.dtype != torch.float64:
            return type(self)._original_forward(self, h)
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def llama_rotary(self, x, position_ids):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim))
        freqs = position_ids[:, :, None].double() * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def qwen2_rotary(self, x, seq_len=None):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    to_float = torch.Tensor.float

    def keep_float64(self, *args, **kwargs):
        # LlamaForCausalLM and Qwen2ForCausalLM cast the logits with .float() before the loss
        return self if self.dtype == torch.float64 else to_float(self, *args, **kwargs)

    patch(torch.Tensor, "float", keep_float64)
    patch(torch.nn.functional, "softmax", softmax64)
    # transformers fills masks with finfo(float64).min in tensors of the default dtype (torch 1.13)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    for norm in (modeling_llama.LlamaRMSNorm, modeling_qwen2.Qwen2RMSNorm):
        norm._original_forward = norm.forward
        patch(norm, "forward", rms_norm)
    patch(modeling_llama.LlamaRotaryEmbedding, "forward", llama_rotary)
    patch(modeling_qwen2.Qwen2RotaryEmbedding, "forward", qwen2_rotary)
    try:
        yield
    finally:
        torch.set_default_dtype(default)
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def run(model, name, inputs, dtype):
    """Forward and backward at `dtype`: (output [tokens, width], loss, {tensor: gradient})."""
    model = model.to(dtype)
    model.zero_grad()
    if name == "bert":
        out = model(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"]).last_hidden_state
        out = out.reshape(BATCH * SEQ, -1)
        loss = (out * inputs["grad_output"].to(dtype)).sum()
    else:
        result = model(input_ids=inputs["input_ids"], labels=inputs["input_ids"])
        out, loss = result.logits.reshape(BATCH * SEQ, -1), result.loss
        # The same loss from tp's side of things: per-token targets, -100 at each sequence's end.
        check = F.cross_entropy(out.double(), inputs["labels"], ignore_index=-100)
        assert abs(check.item() - loss.item()) <= 1e-5 * abs(loss.item()), (check.item(), loss.item())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach().clone(), loss.detach().reshape(1).clone(), grads


def greedy(model, prompt, dtype):
    model = model.to(dtype)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             use_cache=True, pad_token_id=0)
        tokens = out[0, prompt.shape[1]:]
        # The same tokens without the cache, one full forward per step.
        ids = prompt
        for _ in range(NEW_TOKENS):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert torch.equal(ids[0, prompt.shape[1]:], tokens), "generate() and the uncached loop disagree"
    assert tokens.numel() == NEW_TOKENS
    return tokens.clone()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    for i, (name, (cls, config)) in enumerate(models().items()):
        torch.manual_seed(args.seed + i)
        model = make_model(cls, config)
        directory = os.path.join(args.out, name)
        os.makedirs(directory, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        # save_pretrained leaves out tied copies; the gradients use the same names as the file.
        from safetensors import safe_open
        with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
            stored = set(f.keys())

        ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
        labels = torch.cat([ids[:, 1:], torch.full((BATCH, 1), -100)], dim=1).reshape(-1)
        inputs = {"input_ids": ids, "labels": labels}
        if name == "bert":
            inputs["token_type_ids"] = torch.randint(0, config.type_vocab_size, (BATCH, SEQ))
            inputs["grad_output"] = torch.randn(BATCH * SEQ, config.hidden_size, dtype=torch.float64)
        golden = {k: v.contiguous() for k, v in inputs.items()}

        with exact_float64():
            out64, loss64, grads64 = run(model, name, inputs, torch.float64)
        out32, loss32, _ = run(model, name, inputs, torch.float32)
        key = "hidden" if name == "bert" else "logits"
        golden[key], golden["loss"] = out64, loss64
        golden[key + ".f32"], golden["loss.f32"] = out32, loss32
        err = ((out32.double() - out64).abs().max() / out64.abs().max()).item()
        print(f"{name}: loss {loss64.item():.6f}, float32 vs float64 output: {err:.2e} of the largest value")
        assert err < 1e-5, "float32 and float64 disagree beyond float32's accuracy: a float32 path in the model"
        for n, g in grads64.items():
            if n in stored:
                golden["grad." + n] = g.contiguous()
        missing = stored - {n for n in grads64}
        assert not missing, f"tensors without a gradient: {missing}"

        if name != "bert":
            prompt = torch.randint(0, config.vocab_size, (1, PROMPT))
            with exact_float64():
                gen64 = greedy(model, prompt, torch.float64)
            gen32 = greedy(model, prompt, torch.float32)
            assert torch.equal(gen64, gen32), f"{name}: float32 and float64 greedy tokens differ; try another seed"
            golden["prompt"], golden["generated"] = prompt, gen64
            print(f"{name}: generated {gen64.tolist()}")
        # Variable-length batches: decoders run each sequence alone (tp packs them without padding);
        # BERT pads the second sequence's last 3 tokens (tp's key padding mask).
        with exact_float64(), torch.no_grad():
            model.to(torch.float64)
            if name != "bert":
                seqs = [torch.randint(0, config.vocab_size, (1, n)) for n in PACKED]
                golden["packed_ids"] = torch.cat(seqs, dim=1)
                golden["packed_lengths"] = torch.tensor(PACKED)
                golden["packed_logits"] = torch.cat([model(s).logits[0] for s in seqs])
            else:
                mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
                mask[1, -3:] = 0
                golden["attention_mask"] = mask
                golden["masked_hidden"] = model(input_ids=ids, token_type_ids=inputs["token_type_ids"],
                                                attention_mask=mask).last_hidden_state.reshape(BATCH * SEQ, -1)
        model.to(torch.float32)
        save_file(golden, os.path.join(directory, "golden.safetensors"),
                  metadata={"generator": "tests/golden/generate.py", "seed": str(args.seed + i),
                            "transformers": transformers.__version__, "torch": torch.__version__})


if __name__ == "__main__":
    main()

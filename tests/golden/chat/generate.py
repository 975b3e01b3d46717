#!/usr/bin/env python3
"""Writes the goldens of text generation from a text prompt (tests/inference/text_generate_test.cpp):
tiny random-initialised checkpoints whose vocabulary is one of tests/text/golden's tokenizers, and
what transformers does with a text prompt on them.

Run by hand where torch, transformers and tokenizers are installed (tests/golden/chat/README.md); CI
only reads the output. Writes, under tests/golden/chat/:

  templates.json   for each chat template tp knows (tp/text/chat_template.hpp; the real files' text)
                   and a few conversations: transformers' apply_chat_template text and ids
  <name>/          config.json, model.safetensors (save_pretrained), tokenizer.json and
                   tokenizer_config.json (copied from tests/text/golden/<family>/, with the chat
                   template of the case), golden.json: the prompt text, whether it is a chat, the
                   rendered prompt, its ids, the greedy ids of model.generate (stopping at the
                   end-of-turn token for a chat) and their decoded text

A chat case swaps the lm_head rows of the end-of-turn token and of a token greedy generation
chooses after a few steps, so that generation stops there and stopping is tested; the swapped
weights are what is saved.
"""

import json
import os
import shutil

import torch
import transformers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT_GOLDEN = os.path.join(HERE, "..", "..", "text", "golden")
MAX_NEW_TOKENS = 24

# The real templates (tokenizer_config.json of Qwen2-0.5B-Instruct / SmolLM2-135M-Instruct,
# Meta-Llama-3-8B-Instruct, Mistral-7B-Instruct-v0.2), as tp's table holds them.
CHATML_SYSTEM = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\\n{system}<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\\n' }}{% endif %}")
QWEN2 = CHATML_SYSTEM.replace("{system}", "You are a helpful assistant.")
# SmolLM2's file spells the newlines inside its literals as newlines.
SMOLLM2 = (CHATML_SYSTEM.replace("{system}", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")).replace("\\n", "\n")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
          "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
          "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
           "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
           "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
           "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
           "are supported!') }}{% endif %}{% endfor %}")


def tokenizer(family, template=None):
    d = os.path.join(TEXT_GOLDEN, family)
    tok = PreTrainedTokenizerFast.from_pretrained(d)
    if template is not None:
        tok.chat_template = template
    return tok


def templates():
    """(name, tokenizer family, template or None for the family's own, conversations)."""
    user = [{"role": "user", "content": "\u3000 Hello, who are you? \n\u00a0"}]
    turns = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": " Four. "},
             {"role": "user", "content": "And times 3, in Greek: ένα δύο 🙂"}]
    system = [{"role": "system", "content": "Answer briefly."}] + turns
    return [
        ("qwen2-instruct", "qwen2", QWEN2, [user, turns, system]),
        ("smollm2-instruct", "smollm2", SMOLLM2, [user, turns, system]),
        ("chatml", "qwen2", None, [user, turns, system]),
        ("llama3-instruct", "llama3", LLAMA3, [user, turns, system]),
        ("llama3", "llama3", None, [user, turns, system]),
        ("mistral-instruct", "mistral", MISTRAL, [user, turns]),
        ("mistral", "mistral", None, [user, turns]),
    ]


def write_templates():
    out = []
    for name, family, template, conversations in templates():
        tok = tokenizer(family, template)
        for messages in conversations:
            for add in (True, False):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
                ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add)
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
                out.append({"name": name, "family": family, "template": tok.chat_template, "messages": messages,
                            "add_generation_prompt": add, "text": text, "ids": list(map(int, ids))})
    with open(os.path.join(HERE, "templates.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "cases": out}, f, ensure_ascii=False, indent=1)
        f.write("\n")


def models():
    """name -> (model class, config, tokenizer family, template or None, prompt, chat)."""
    return {
        "gpt2-text": (GPT2LMHeadModel, GPT2Config(vocab_size=1200, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                                  n_positions=96, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                  bos_token_id=None, eos_token_id=None, initializer_range=0.2),
                      "gpt2", None, "In the beginning God créated ☀ the", False),
        "qwen2-chat": (Qwen2ForCausalLM, Qwen2Config(vocab_size=1200, hidden_size=36, num_hidden_layers=2,
                                                     num_attention_heads=6, num_key_value_heads=1,
                                                     intermediate_size=50, max_position_embeddings=128,
                                                     tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                                                     initializer_range=0.2),
                       "qwen2", QWEN2, "Who made the heaven and the earth?", True),
        "llama3-chat": (LlamaForCausalLM, LlamaConfig(vocab_size=1203, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2,
                                                      intermediate_size=44, max_position_embeddings=128,
                                                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                                                     initializer_range=0.2),
                        "llama3", LLAMA3, "  And God said, Let there be light ", True),
        "mistral-chat": (MistralForCausalLM, MistralConfig(vocab_size=903, hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4, num_key_value_heads=2,
                                                           intermediate_size=44, max_position_embeddings=128,
                                                           sliding_window=None, tie_word_embeddings=False,
                                                           bos_token_id=None, eos_token_id=None, initializer_range=0.2),
                         "mistral", MISTRAL, "Καὶ εἶπεν ὁ θεός: light 🙂", True),
    }


def greedy(model, ids, stop):
    out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         eos_token_id=stop, pad_token_id=0)
    return out[0, len(ids):].tolist()


def write_model(name, cls, config, family, template, prompt, chat):
    torch.manual_seed(1234)
    model = cls(config).eval()
    tok = tokenizer(family, template)
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        ids = list(map(int, ids))
        rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        stop_token = {"qwen2": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}[family]
        stop = tok.convert_tokens_to_ids(stop_token)
        # Make greedy generation end the turn after a few tokens: the lm_head rows of the end-of-turn
        # token and of the token chosen at some step swap, which swaps those two logits and leaves
        # every choice before that token's first appearance as it was.
        free = greedy(model, ids, None)
        assert stop not in free, f"{name}: the end-of-turn token came unaided"
        at = next(i for i in range(len(free)) if free.index(free[i]) == i and i >= 5)
        with torch.no_grad():
            w = model.lm_head.weight
            w[[stop, free[at]]] = w[[free[at], stop]]
        generated = greedy(model, ids, stop)
        assert generated == free[:at] + [stop], (generated, free)
    else:
        ids = tok(prompt)["input_ids"]
        rendered = prompt
        stop = None
        generated = greedy(model, ids, None)
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(TEXT_GOLDEN, family, f)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(d, f))
    if template is not None:
        with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["chat_template"] = template
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
            f.write("\n")
    # Decoded as a whole, and as a streamer would print it: what the C++ side prints.
    golden = {"transformers": transformers.__version__, "torch": torch.__version__, "prompt": prompt, "chat": chat,
              "rendered": rendered, "prompt_ids": ids, "stop": stop, "generated": generated,
              "text": tok.decode(generated), "text_skip_special": tok.decode(generated, skip_special_tokens=True)}
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(name, len(ids), "prompt tokens,", len(generated), "generated:", repr(golden["text"]))


def main():
    write_templates()
    for name, spec in models().items():
        write_model(name, *spec)


if __name__ == "__main__":
    main()

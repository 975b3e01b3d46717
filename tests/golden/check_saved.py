#!/usr/bin/env python3
"""Loads directories that tp's save_hugging_face wrote with transformers' from_pretrained and
compares what transformers computes from them with the goldens of the model they were loaded
from: the proof that transformers reads what tp saves. Run by hand (tests/golden/README.md):

    check_saved.py <model name: gpt2, llama, qwen2, bert or bert-heads> <directory tp saved> [...more pairs]

bert-heads (a BertForPreTraining checkpoint, generate_bert_heads.py): the directory must load as
BertForPreTraining and as BertModel with its pooler with no tensor missing (nothing initialised at
random) and give the original checkpoint's prediction logits, next-sentence logits and pooler
output. Exits non-zero if an output differs by more than 1e-5 of its largest value.
"""

import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

GOLDEN = os.path.dirname(os.path.abspath(__file__))


def check_bert_heads(saved):
    from transformers import BertForPreTraining, BertModel
    original = os.path.join(GOLDEN, "bert-heads")
    ids = torch.tensor([[1, 5, 9, 20, 33, 2, 7, 60]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    ok = True
    for cls, outputs in ((BertForPreTraining, ("prediction_logits", "seq_relationship_logits")),
                         (BertModel, ("pooler_output", "last_hidden_state"))):
        want = cls.from_pretrained(original).eval()
        got, info = cls.from_pretrained(saved, output_loading_info=True)
        missing = info["missing_keys"]
        print(f"bert-heads: {saved}: {cls.__name__}: missing {sorted(missing)}, unexpected {sorted(info['unexpected_keys'])}")
        ok = ok and not missing
        with torch.no_grad():
            a, b = want(input_ids=ids, token_type_ids=types), got.eval()(input_ids=ids, token_type_ids=types)
        for o in outputs:
            err = ((getattr(b, o) - getattr(a, o)).abs().max() / getattr(a, o).abs().max()).item()
            print(f"  {o}: within {err:.2e} of the largest value")
            ok = ok and err <= 1e-5
    return ok


def check(name, saved):
    if name == "bert-heads":
        return check_bert_heads(saved)
    golden = load_file(os.path.join(GOLDEN, name, "golden.safetensors"))
    config = AutoConfig.from_pretrained(saved)
    if config.model_type == "bert":
        model = AutoModel.from_pretrained(saved, add_pooling_layer=False, torch_dtype=torch.float64)
    else:
        model = AutoModelForCausalLM.from_pretrained(saved, torch_dtype=torch.float64)
    with torch.no_grad():
        ids = golden["input_ids"]
        if config.model_type == "bert":
            out = model.eval()(input_ids=ids, token_type_ids=golden["token_type_ids"]).last_hidden_state
            want = golden["hidden"]
        else:
            out = model.eval()(input_ids=ids).logits
            want = golden["logits"]
    err = ((out.reshape(want.shape).double() - want).abs().max() / want.abs().max()).item()
    print(f"{name}: {saved}: {type(model).__name__}, outputs within {err:.2e} of the largest golden value")
    return err <= 1e-5


def main():
    torch.set_default_dtype(torch.float64)  # torch 1.13: transformers' float64 masks need it
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    ok = all([check(args[i], args[i + 1]) for i in range(0, len(args), 2)])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

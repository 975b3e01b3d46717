#!/usr/bin/env python3
"""Does transformers read what examples/finetune --save-hf wrote? Loads the directory with
AutoModelForCausalLM and AutoTokenizer (no tensor may be missing or unexpected), generates greedily
from a chat prompt, runs examples/generate --chat on the same directory at TP 1 and 2, and checks
that both produce the same ids. Run by hand where torch and transformers are installed
(tests/examples/README.md):

    check_finetuned.py <build/examples/generate> <directory finetune saved> "<prompt>" [max new tokens]
"""

import re
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    generate, saved, prompt = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    model, info = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    print(f"{saved}: {type(model).__name__}; loading info: {bad or 'nothing missing, unexpected or mismatched'}")
    tok = AutoTokenizer.from_pretrained(saved)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True)
    ids = list(ids["input_ids"])
    eot = tok.convert_tokens_to_ids(tok.eos_token)
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=eot,
                                    pad_token_id=0)
    want = out[0, len(ids):].tolist()
    print(f"transformers: {want} {tok.decode(want)!r}")
    ok = not bad
    for world in (1, 2):
        log = subprocess.run([generate, "--backend", "local", "--world", str(world), "--model", saved, "--chat",
                              "--prompt", prompt, "--max-new-tokens", str(n)], check=True, capture_output=True,
                             text=True).stdout
        got = [int(x) for x in re.search(r"^ids: (.*)$", log, re.M).group(1).split()]
        print(f"tp TP {world}: {got} {'same' if got == want else 'DIFFERENT'}")
        ok = ok and got == want
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

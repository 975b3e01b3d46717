#!/usr/bin/env python3
"""Writes tests/golden/bert-heads/: a tiny random-initialised BertForPreTraining checkpoint (config.json,
model.safetensors as save_pretrained writes them): the encoder, the pooler, the masked-LM head
(cls.predictions.*, its decoder tied to the word embeddings) and the next-sentence head, all under
"bert."/"cls." names. tp computes with the encoder alone and must save the rest back unchanged
(Golden.BertSavedWholeWithPoolerAndHeads). Run by hand where torch and transformers are installed;
CI only reads the output.
"""

import os

import torch
from transformers import BertConfig, BertForPreTraining

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    torch.manual_seed(4321)
    config = BertConfig(vocab_size=67, hidden_size=24, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=40, max_position_embeddings=48, type_vocab_size=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=None)
    model = BertForPreTraining(config).eval()
    with torch.no_grad():  # make the biases nonzero, so that a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(os.path.join(HERE, "bert-heads"), safe_serialization=True)


if __name__ == "__main__":
    main()

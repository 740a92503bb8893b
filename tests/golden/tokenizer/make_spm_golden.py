#!/usr/bin/env python3
"""Golden ids for the SentencePiece-style tokenizer (stories260K, tok512.bin).

An independent reference: a plain re-statement of llama2.c's encode() (run.c) in Python,
written for QuantLens. It reads llama2.c's tokenizer.bin format (int32 max_token_length, then per
token: float32 score, int32 length, bytes), prepends the dummy-prefix " " token, looks up each
UTF-8 character (byte fallback: id = byte + 3), then repeatedly merges the adjacent pair whose
concatenation is in the vocabulary with the highest score (leftmost on ties).

Usage: make_spm_golden.py [path/to/tok512.bin] > spm_stories260k.json
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("QUANTLENS_DATA", os.path.join(HERE, "..", "..", "..", "..", "shared", "data"))


def load_tokenizer(path):
    blob = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<i", blob, 0)
    off, pieces, scores = 4, [], []
    while off < len(blob):
        score, n = struct.unpack_from("<fi", blob, off)
        off += 8
        pieces.append(blob[off:off + n])
        scores.append(score)
        off += n
    return pieces, scores


def encode(text, pieces, scores):
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)  # llama2.c's sorted lookup; pieces are unique
    raw = text.encode("utf-8")
    ids = []
    if raw:
        ids.append(lookup[b" "])  # dummy prefix
    i = 0
    while i < len(raw):
        n = 1
        while i + n < len(raw) and (raw[i + n] & 0xC0) == 0x80 and n < 4:
            n += 1
        ch = raw[i:i + n]
        if ch in lookup:
            ids.append(lookup[ch])
        else:
            ids.extend(b + 3 for b in ch)
        i += n
    while True:
        best, best_id, best_at = -1e10, -1, -1
        for k in range(len(ids) - 1):
            merged = pieces[ids[k]] + pieces[ids[k + 1]]
            j = lookup.get(merged)
            if j is not None and scores[j] > best:
                best, best_id, best_at = scores[j], j, k
        if best_at < 0:
            break
        ids[best_at:best_at + 2] = [best_id]
    return ids


SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the sunshine.",
    "\"Wow, Kitty, your car is so bright and clean!\" Kitty smiled.",
    "Tom and Sue went to the park.\nThey saw a big dog.",
    "  two leading spaces and  a double space",
    "Numbers 12345 and 3.14, symbols @#$%^&*() ~ []",
    "Café, naïve, Über — “quotes” and ™",
    "日本語 text with CJK and emoji 🙂 falls back to bytes",
    "trailing newline\n",
]


def write_json(out):
    """One case per line keeps the golden file small and diffable."""
    lines = ["{", ' "source": %s,' % json.dumps(out["source"]), ' "cases": [']
    body = [json.dumps(c, ensure_ascii=False) for c in out["cases"]]
    lines.append(",\n".join("  " + b for b in body))
    lines += [" ]", "}"]
    sys.stdout.write("\n".join(lines) + "\n")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(DATA, "models/stories260K/tok512.bin")
    pieces, scores = load_tokenizer(path)
    cases = [{"text": s, "ids": encode(s, pieces, scores)} for s in SENTENCES]
    out = {
        "source": "tests/golden/tokenizer/make_spm_golden.py on shared/data/models/stories260K/"
                  "tok512.bin (Python re-statement of llama2.c encode); ids exclude BOS",
        "cases": cases,
    }
    write_json(out)


if __name__ == "__main__":
    main()

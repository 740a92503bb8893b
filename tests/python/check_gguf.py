#!/usr/bin/env python3
"""Check a GGUF file with llama.cpp's own reader (the `gguf` Python package, gguf-py).

Usage: check_gguf.py FILE EXPECT.json

EXPECT.json (written by tests/core/test_gguf_writer):
  {"tensor_count": N,
   "tensors": {"name": {"type": "Q4_0", "ne": [cols, rows]}, ...},
   "metadata": {"key": value, ...},                 # strings, numbers, lists compared by value
   "decoded": {"name": "/path/to/values.f32", ...}} # expected decoded values, little-endian f32

Every tensor listed must exist with that type and shape; the decoded tensors are decoded with
gguf.quants.dequantize and must equal the given values exactly. Prints one line per problem and
exits 1 when there is any, else prints a summary and exits 0.
"""
import json
import sys

import numpy as np

import gguf


def field_value(field):
    # gguf >= 0.10 has ReaderField.contents(); fall back to the parts otherwise.
    if hasattr(field, "contents"):
        return field.contents()
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return [field.parts[i].tolist()[0] for i in field.data]


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    path, expect_path = sys.argv[1], sys.argv[2]
    with open(expect_path, encoding="utf-8") as f:
        expect = json.load(f)
    reader = gguf.GGUFReader(path)
    problems = []

    tensors = {t.name: t for t in reader.tensors}
    if "tensor_count" in expect and len(reader.tensors) != expect["tensor_count"]:
        problems.append(f"tensor count {len(reader.tensors)}, expected {expect['tensor_count']}")
    for name, want in expect.get("tensors", {}).items():
        t = tensors.get(name)
        if t is None:
            problems.append(f"tensor {name} missing")
            continue
        if t.tensor_type.name != want["type"]:
            problems.append(f"tensor {name}: type {t.tensor_type.name}, expected {want['type']}")
        ne = [int(x) for x in t.shape]
        if ne != want["ne"]:
            problems.append(f"tensor {name}: ne {ne}, expected {want['ne']}")

    for key, want in expect.get("metadata", {}).items():
        field = reader.fields.get(key)
        if field is None:
            problems.append(f"metadata {key} missing")
            continue
        got = field_value(field)
        if not same(got, want):
            problems.append(f"metadata {key}: {str(got)[:80]}, expected {str(want)[:80]}")

    for name, values_path in expect.get("decoded", {}).items():
        t = tensors.get(name)
        if t is None:
            continue
        want = np.fromfile(values_path, dtype="<f4")
        got = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        if got.shape != want.shape:
            problems.append(f"decoded {name}: {got.size} values, expected {want.size}")
        elif not np.array_equal(got, want):
            diff = int(np.count_nonzero(got != want))
            problems.append(f"decoded {name}: {diff} of {want.size} values differ "
                            f"(max |d| {float(np.max(np.abs(got - want))):.3g})")

    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"ok: {len(reader.tensors)} tensors, {len(reader.fields)} fields, "
          f"{len(expect.get('decoded', {}))} decoded tensors checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Dequantize a GPTQ-layout safetensors folder with NumPy, written from the format's description
(AutoGPTQ / transformers quant_method "gptq", checkpoint_format "gptq" = v1), independently of
QuantLens's C++ reader, and compare it with a reference folder of float weights (issue #8).

    gptq_dequant.py GPTQ_DIR REFERENCE_DIR [--json]

REFERENCE_DIR is a plain Hugging Face safetensors folder of the same model, normally
`quantlens-cli export MODEL --layout L --fake-quant REF --dtype f32` (the quantized model's
decoded weights in float32). Per module with a qweight:

    bits b, group size from quantization_config; in = g_idx.size, out = scales.shape[1]
    q[i, o] = bits [b*i, b*i + b) of the little-endian bit stream of column o of qweight
    z[g, o] = bits [b*o, b*o + b) of the little-endian bit stream of row g of qzeros, plus 1
              (v1 stores zero - 1; gptq_v2 stores the zero itself)
    W[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o])   (float32)

The quantized layers must equal the reference exactly (the scales are fp16 values in both);
every other tensor must equal the reference rounded to the folder's float type.
Exit 0 when everything agrees, 1 with one line per difference, 2 on bad input.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    """{name: ndarray} from a .safetensors file (format: u64 header length, JSON header, data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": None, "I32": np.int32,
              "I64": np.int64, "U8": np.uint8}
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = info["dtype"]
        if dt == "BF16":
            u = np.frombuffer(data[b:e], dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=np.dtype(dtypes[dt]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def unpack(words, count, bits):
    """Values [0, count) of the little-endian bit stream of `words` (uint32 along axis 0)."""
    words = words.astype(np.uint64)
    k = np.arange(count, dtype=np.uint64)
    bit = k * np.uint64(bits)
    w = (bit // np.uint64(32)).astype(np.int64)
    off = bit % np.uint64(32)
    lo = words[w] >> off[:, None]
    nxt = np.minimum(w + 1, words.shape[0] - 1)
    hi = np.where(((off + np.uint64(bits)) > np.uint64(32))[:, None],
                  words[nxt] << (np.uint64(32) - off)[:, None], np.uint64(0))
    return ((lo | hi) & np.uint64((1 << bits) - 1)).astype(np.int64)


def dequantize_layer(qweight, qzeros, scales, g_idx, bits, zero_offset):
    groups, out = scales.shape
    inp = g_idx.shape[0]
    q = unpack(qweight.view(np.uint32), inp, bits)                # [in, out]
    z = unpack(qzeros.view(np.uint32).T, out, bits).T + zero_offset  # [groups, out]
    s = scales.astype(np.float32)
    g = g_idx.astype(np.int64)
    w = s[g, :] * (q - z[g, :]).astype(np.float32)                # [in, out]
    return w.T.copy()                                             # [out, in]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__)
        return 2
    gptq_dir, ref_dir = args
    with open(f"{gptq_dir}/config.json", encoding="utf-8") as f:
        qc = json.load(f)["quantization_config"]
    if qc.get("quant_method") != "gptq":
        print(f"{gptq_dir}: quant_method is {qc.get('quant_method')}, not gptq")
        return 2
    bits = int(qc["bits"])
    zero_offset = 0 if qc.get("checkpoint_format") == "gptq_v2" else 1
    t = read_safetensors(f"{gptq_dir}/model.safetensors")
    ref = read_safetensors(f"{ref_dir}/model.safetensors")
    problems, layers, others = [], 0, 0
    modules = sorted(n[: -len(".qweight")] for n in t if n.endswith(".qweight"))
    for m in modules:
        w = dequantize_layer(t[m + ".qweight"], t[m + ".qzeros"], t[m + ".scales"],
                             t[m + ".g_idx"], bits, zero_offset)
        r = ref.get(m + ".weight")
        layers += 1
        if r is None:
            problems.append(f"{m}.weight missing from the reference")
        elif r.shape != w.shape:
            problems.append(f"{m}: shape {w.shape}, reference {r.shape}")
        elif not np.array_equal(w, r.astype(np.float32)):
            d = np.abs(w - r.astype(np.float32))
            problems.append(f"{m}: {int((d > 0).sum())} of {d.size} weights differ, max {d.max():g}")
    for name, v in t.items():
        if name.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales", "g_idx"):
            continue
        others += 1
        r = ref.get(name)
        if r is None:
            problems.append(f"{name} missing from the reference")
            continue
        want = r.astype(np.float32).astype(v.dtype) if v.dtype == np.float16 else r
        if v.shape != r.shape or not np.array_equal(v.astype(np.float32), want.astype(np.float32)):
            problems.append(f"{name}: differs from the reference rounded to {v.dtype}")
    for p in problems:
        print(p)
    summary = {"layers": layers, "other_tensors": others, "bits": bits,
               "group_size": qc.get("group_size"), "sym": qc.get("sym"), "problems": len(problems)}
    print(json.dumps(summary) if "--json" in sys.argv else
          f"gptq_dequant: {layers} GPTQ layers exact, {others} other tensors checked, "
          f"{len(problems)} problems ({bits}-bit, group {qc.get('group_size')}, sym {qc.get('sym')})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

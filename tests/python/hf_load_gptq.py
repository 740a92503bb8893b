#!/usr/bin/env python3
"""Does Hugging Face transformers load QuantLens's GPTQ export, and compute what QuantLens computes?
(issue #8; for the GPU machine: torch, transformers, safetensors, numpy; optimum / gptqmodel /
auto-gptq optional).

    hf_load_gptq.py GPTQ_DIR FAKEQUANT_DIR [--seqlen 128] [--batch 2] [--json]

Both folders come from the same quantized model:
    quantlens-cli export MODEL --layout L --gptq GPTQ_DIR
    quantlens-cli export MODEL --layout L --fake-quant FAKEQUANT_DIR --dtype f32
FAKEQUANT_DIR holds exactly the weights QuantLens evaluates for that layout (test_hf_export checks
our reader and tests/python/gptq_dequant.py against it), in a plain Llama checkpoint.

1. reference: transformers runs FAKEQUANT_DIR (float32) on seeded random token ids -> logits R.
2. transformers' own GPTQ loading of GPTQ_DIR (needs optimum + auto-gptq, or gptqmodel; CUDA):
   logits G, compared with R (fp16 GPTQ kernels: agreement to ~1e-2 relative is expected).
   When the GPTQ backend is missing the script says so and skips this step.
3. NumPy: GPTQ_DIR dequantized by gptq_dequant.py's decoder (written from the format's
   description), loaded into the plain Llama model -> logits N; N must equal R to float32
   rounding (max |N - R| / max |R| < 1e-5), and the weights must match exactly.
Exit 0 when every step that ran agrees, 1 otherwise, 2 on bad input.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_dequant import dequantize_layer, read_safetensors  # noqa: E402


def logits_of(model, ids, torch):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float().cpu().numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gptq")
    p.add_argument("fakequant")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": device}
    ok = True
    ref_model = AutoModelForCausalLM.from_pretrained(a.fakequant, torch_dtype=torch.float32)
    ref_model = ref_model.to(device).eval()
    cfg = ref_model.config
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seqlen), generator=gen).to(device)
    ref = logits_of(ref_model, ids, torch)
    scale = float(np.abs(ref).max())

    # 2. transformers' GPTQ loading.
    try:
        gptq_model = AutoModelForCausalLM.from_pretrained(a.gptq, device_map=device)
        g = logits_of(gptq_model.eval(), ids, torch)
        rel = float(np.abs(g - ref).max()) / scale
        same_top = float((g.argmax(-1) == ref.argmax(-1)).mean())
        result["transformers_gptq"] = {"max_rel_diff": rel, "same_top": same_top}
        print(f"transformers GPTQ load: max |G - R| / max |R| = {rel:.3e}, same top-1 {same_top:.4f}")
        ok &= rel < 5e-2 and same_top > 0.95
    except Exception as e:  # missing optimum/gptqmodel, no CUDA kernels, ...
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        result["transformers_gptq"] = {"skipped": msg}
        print(f"transformers GPTQ load not available ({msg}); falling back to the NumPy check")

    # 3. NumPy decoder into the plain model.
    with open(os.path.join(a.gptq, "config.json"), encoding="utf-8") as f:
        qc = json.load(f)["quantization_config"]
    bits = int(qc["bits"])
    zero_offset = 0 if qc.get("checkpoint_format") == "gptq_v2" else 1
    t = read_safetensors(os.path.join(a.gptq, "model.safetensors"))
    state = {}
    for name, v in t.items():
        if name.endswith(".qweight"):
            m = name[: -len(".qweight")]
            state[m + ".weight"] = dequantize_layer(t[m + ".qweight"], t[m + ".qzeros"],
                                                    t[m + ".scales"], t[m + ".g_idx"], bits,
                                                    zero_offset)
        elif name.rsplit(".", 1)[-1] not in ("qzeros", "scales", "g_idx"):
            state[name] = v.astype(np.float32)
    np_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.fakequant),
                                                torch_dtype=torch.float32)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = np_model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not cfg.tie_word_embeddings]
    if missing or unexpected:
        print(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        ok = False
    if cfg.tie_word_embeddings:
        np_model.tie_weights()
    ref_sd = ref_model.state_dict()
    weight_diff = 0.0
    for k, v in sd.items():
        if k in ref_sd and ".layers." in k:
            r = ref_sd[k].float().cpu()
            if "weight" in k and k.replace(".weight", ".qweight") in t:
                weight_diff = max(weight_diff, float((v - r).abs().max()))
    n = logits_of(np_model.to(device).eval(), ids, torch)
    rel = float(np.abs(n - ref).max()) / scale
    result["numpy"] = {"max_rel_diff": rel, "packed_weight_max_diff": weight_diff}
    print(f"NumPy-dequantized GPTQ in transformers: packed weights max |diff| {weight_diff:g}, "
          f"max |N - R| / max |R| = {rel:.3e}")
    ok &= weight_diff == 0.0 and rel < 1e-5
    result["ok"] = bool(ok)
    if a.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

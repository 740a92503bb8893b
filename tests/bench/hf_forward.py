#!/usr/bin/env python3
"""Forward-pass throughput of a Hugging Face model folder with transformers, for comparison with
`quantlens-cli bench forward` on the same folder (issue #5).

Same protocol as the QuantLens benchmark: random token ids (seeded), BATCH sequences of SEQLEN
tokens per pass, the causal forward with logits for every position (no KV cache, no loss), one
warm-up pass and REPEAT timed ones, each timed with a CUDA synchronisation. bf16 weights and
activations, attn_implementation="sdpa" (PyTorch's fused attention: flash on Hopper).

    python3 tests/bench/hf_forward.py DIR [--seqlen 2048] [--batch 1] [--repeat 5] [--json]
"""
import argparse
import json
import sys
import time


def model_flops(cfg, batch, seqlen):
    """Same count as quantlens-cli: 2 FLOP per weight per token, causal attention once."""
    dim, ffn = cfg.hidden_size, cfg.intermediate_size
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or dim // heads
    q, kvd = heads * head_dim, kv * head_dim
    blocks, vocab = cfg.num_hidden_layers, cfg.vocab_size
    per_token = 2.0 * blocks * (dim * (q + 2 * kvd) + q * dim + 3 * dim * ffn) + 2.0 * dim * vocab
    attention = 4.0 * head_dim * seqlen * (seqlen + 1) / 2 * heads * blocks
    return batch * (seqlen * per_token + attention)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        print("hf_forward.py: no CUDA device", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.bfloat16, attn_implementation="sdpa").to("cuda").eval()
    load = time.perf_counter() - t0
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seqlen), generator=gen).to("cuda")

    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for i in range(a.repeat + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(input_ids=ids, use_cache=False)
            torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t)
            del out
    mean = sum(times) / len(times)
    tokens_per_s = a.batch * a.seqlen / mean
    tflops = model_flops(cfg, a.batch, a.seqlen) / mean / 1e12
    peak = torch.cuda.max_memory_allocated()
    result = {
        "model": a.model, "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "batch": a.batch, "seqlen": a.seqlen, "repeat": a.repeat,
        "seconds_mean": mean, "seconds_best": min(times), "tokens_per_second": tokens_per_s,
        "tflops": tflops, "peak_allocated_bytes": peak, "load_seconds": load,
        "attn_implementation": model.config._attn_implementation,
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model        {a.model} (transformers {result['transformers']}, torch "
              f"{result['torch']}, {result['attn_implementation']})")
        print(f"device       {result['device']}, bf16")
        print(f"forward      {a.batch} x {a.seqlen} tokens: mean {mean * 1e3:.2f} ms, "
              f"best {min(times) * 1e3:.2f} ms over {a.repeat} runs")
        print(f"throughput   {tokens_per_s:.0f} tokens/s, {tflops:.1f} TFLOP/s")
        print(f"memory       peak allocated {peak / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

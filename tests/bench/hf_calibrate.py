#!/usr/bin/env python3
"""Calibration-statistics throughput of a Hugging Face model folder with transformers, for
comparison with `quantlens-cli bench calibrate` on the same folder (issue #5).

Same protocol as the QuantLens benchmark: SAMPLES random windows (seeded) of SEQLEN tokens, BATCH
windows per forward pass (default: as many as make 16384 tokens), the causal forward with logits
(no KV cache, no loss), bf16 weights and activations, attn_implementation="sdpa". Two timed
passes over all windows, each after an untimed warm-up batch in the same mode:

  off  the plain forward, no hooks;
  on   forward pre-hooks on the linear layers collecting, for each distinct input (q/k/v share
       one hook on q_proj, gate/up one on gate_proj; o_proj and down_proj have their own), what
       QuantLens collects, written the way a competent PyTorch user would:
         per-channel abs-max      x.abs().amax(0) in float32
         sum |x|, sum x^2         float32 values summed in float64
         histogram                torch.histc over a symmetric running range (a power of two,
                                  doubled with pair merges as the batch max grows; the max is
                                  read with .item())
         top-k |x|                torch.topk over the batch, merged with the running top-k
         Hessian X^T X            float32 addmm on tensor cores (TF32), float32 accumulator
       The timed pass ends with a torch.cuda.synchronize and copying every statistic to the host.

    python3 tests/bench/hf_calibrate.py DIR [--seqlen 2048] [--samples 32] [--batch N]
                                        [--bins 2048] [--top-k 32] [--no-tf32] [--json]
"""
import argparse
import json
import math
import sys
import time


class ProbeStats:
    """One linear-layer input's statistics, accumulated on the device."""

    def __init__(self, torch, channels, bins, top_k, device):
        self.torch = torch
        self.bins = bins + (bins & 1)
        self.top_k = top_k
        self.absmax = torch.zeros(channels, dtype=torch.float32, device=device)
        self.sum_abs = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(channels, dtype=torch.float64, device=device)
        self.hist = torch.zeros(self.bins, dtype=torch.float32, device=device)
        self.range = 0.0
        self.top_val = torch.empty(0, dtype=torch.float32, device=device)
        self.top_row = torch.empty(0, dtype=torch.int64, device=device)
        self.top_channel = torch.empty(0, dtype=torch.int64, device=device)
        self.hessian = torch.zeros(channels, channels, dtype=torch.float32, device=device)
        self.tokens = 0

    def grow(self, needed):
        """Doubles the range (merging bin pairs into the middle half) until it covers needed."""
        if self.range == 0.0:
            self.range = 2.0 ** math.ceil(math.log2(max(needed, 2.0 ** -126)))
            return
        while self.range < needed:
            merged = self.hist.view(-1, 2).sum(1)
            self.hist.zero_()
            q = self.bins // 4
            self.hist[q:q + merged.numel()] = merged
            self.range *= 2

    def add(self, x, first_row):
        torch = self.torch
        c = x.shape[-1]
        x = x.reshape(-1, c)
        xf = x.float()
        a = xf.abs()
        self.absmax = torch.maximum(self.absmax, a.amax(0))
        self.sum_abs += a.sum(0, dtype=torch.float64)
        self.sum_sq += xf.square().sum(0, dtype=torch.float64)
        batch_max = a.max().item()  # histc needs the range on the host
        if batch_max > self.range:
            self.grow(batch_max)
        self.hist += torch.histc(xf, bins=self.bins, min=-self.range, max=self.range)
        if self.top_k > 0:
            k = min(self.top_k, a.numel())
            val, idx = torch.topk(a.flatten(), k)
            signed = xf.flatten()[idx]
            vals = torch.cat([self.top_val, signed])
            rows = torch.cat([self.top_row, idx // c + first_row])
            chans = torch.cat([self.top_channel, idx % c])
            keep = torch.topk(vals.abs(), min(self.top_k, vals.numel())).indices
            self.top_val, self.top_row, self.top_channel = vals[keep], rows[keep], chans[keep]
        self.hessian.addmm_(xf.T, xf)
        self.tokens += x.shape[0]

    def to_host(self):
        return [t.cpu() for t in (self.absmax, self.sum_abs, self.sum_sq, self.hist, self.top_val,
                                  self.top_row, self.top_channel, self.hessian)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--bins", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--no-tf32", action="store_true", help="Hessian in full float32 (no TF32)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    batch = a.batch or max(1, 16384 // a.seqlen)
    batch = min(batch, a.samples)

    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        print("hf_calibrate.py: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = not a.no_tf32
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.bfloat16, attn_implementation="sdpa").to("cuda").eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (a.samples, a.seqlen), generator=gen).to("cuda")

    # One probe per distinct input: k/v read q's input, up reads gate's.
    shared = ("k_proj", "v_proj", "up_proj")
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "lm_head"
               and not name.endswith(shared)]
    state = {"first_row": 0}
    probes = {}
    handles = []

    def install():
        for name, m in targets:
            probes[name] = ProbeStats(torch, m.in_features, a.bins, a.top_k, "cuda")

            def hook(module, args, probe=probes[name]):
                probe.add(args[0], state["first_row"])

            handles.append(m.register_forward_pre_hook(hook))

    def run_pass(count):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in range(0, count, batch):
            n = min(batch, count - s)
            state["first_row"] = s * a.seqlen
            out = model(input_ids=ids[s:s + n], use_cache=False)
            del out
        torch.cuda.synchronize()
        return time.perf_counter() - t

    tokens = a.samples * a.seqlen
    with torch.inference_mode():
        run_pass(batch)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        off = run_pass(a.samples)
        peak_off = torch.cuda.max_memory_allocated()

        install()
        run_pass(batch)  # warm-up with hooks, then start afresh
        probes.clear()
        for h in handles:
            h.remove()
        handles.clear()
        install()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t = time.perf_counter()
        run_pass(a.samples)
        t_download = time.perf_counter()
        host = [p.to_host() for p in probes.values()]
        on = time.perf_counter() - t
        download = time.perf_counter() - t_download
        peak_on = torch.cuda.max_memory_allocated()
    assert all(p.tokens == tokens for p in probes.values())
    del host

    result = {
        "model": a.model, "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "attn_implementation": model.config._attn_implementation,
        "seqlen": a.seqlen, "samples": a.samples, "batch": batch, "probes": len(probes),
        "bins": a.bins, "top_k": a.top_k, "tf32": not a.no_tf32,
        "seconds_off": off, "seconds_on": on, "seconds_download": download,
        "tokens_per_second_off": tokens / off, "tokens_per_second_on": tokens / on,
        "overhead_percent": 100.0 * (on - off) / off,
        "peak_allocated_bytes_off": peak_off, "peak_allocated_bytes_on": peak_on,
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model        {a.model} (transformers {result['transformers']}, torch "
              f"{result['torch']}, {result['attn_implementation']})")
        print(f"device       {result['device']}, bf16")
        print(f"windows      {a.samples} x {a.seqlen} tokens, {batch} per forward")
        print(f"hooks off    {tokens / off:10.0f} tokens/s  ({off:.3f} s, plain forward)")
        print(f"hooks on     {tokens / on:10.0f} tokens/s  ({on:.3f} s: abs-max, mean |x|, "
              f"mean x^2, {a.bins}-bin histc, top-{a.top_k}, Hessian f32"
              f"{' (TF32)' if not a.no_tf32 else ''} over {len(probes)} probes; "
              f"download {download:.3f} s)")
        print(f"overhead     {result['overhead_percent']:+.1f}%")
        print(f"memory       peak allocated {peak_off / 1e9:.2f} GB off, {peak_on / 1e9:.2f} GB on")
    return 0


if __name__ == "__main__":
    sys.exit(main())

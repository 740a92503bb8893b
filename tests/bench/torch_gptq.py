#!/usr/bin/env python3
"""A plain PyTorch GPTQ, the reference for `quantlens-cli bench gptq` (issue #6).

The column loop as in the GPTQ paper's code (Frantar et al. 2022): dead columns, dampening of 1% of
the mean diagonal, the upper Cholesky factor of the inverse Hessian (cholesky, cholesky_inverse,
cholesky upper), blocks of 128 columns quantized one at a time with per-group min/max scales
(int4, group 128, symmetric by default) fitted when the loop reaches a group, the in-block update
per column and the lazy trailing update per block as one matmul. float32 throughout, TF32 off.

Inputs are generated like the benchmark's (not bit-identical: torch's own RNG with a fixed seed):
heavy-tailed weights (normal times a log-normal scale, every 61st input channel 4x) and
H = X^T X / tokens from heavy-tailed activations (2 x cols tokens, every 97th channel 20x).

Prints, per shape (rows x cols), the median of --repeat timed runs after one warm-up, each
bracketed by torch.cuda.synchronize(); the factorization is included, the generation is not.

  python3 tests/bench/torch_gptq.py [--shapes 4096x4096,14336x4096,4096x14336] [--bits 4]
                                    [--group 128] [--block 128] [--actorder] [--repeat 5]
"""
import argparse
import statistics
import time

import torch


def generate(rows, cols, device, seed=1234):
    g = torch.Generator(device=device).manual_seed(seed)
    tokens = 2 * cols
    x = torch.randn(tokens, cols, device=device, generator=g)
    x *= torch.exp(0.5 * torch.randn(tokens, cols, device=device, generator=g))
    x[:, 13::97] *= 20.0
    h = (x.T @ x) / tokens
    del x
    w = 0.02 * torch.randn(rows, cols, device=device, generator=g)
    w *= torch.exp(0.3 * torch.randn(rows, cols, device=device, generator=g))
    w[:, 7::61] *= 4.0
    return w, h


def fit(x, bits, sym):
    """Per-row scale and zero point of a group x (rows x len), as GPTQ's quantizer."""
    lo = torch.clamp(x.min(dim=1).values, max=0)
    hi = torch.clamp(x.max(dim=1).values, min=0)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi) / qmax
        zero = torch.zeros_like(scale)
        qmin = -(2 ** (bits - 1))
    else:
        qmax = 2 ** bits - 1
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        qmin = 0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero, qmin, qmax


def quantize(w, scale, zero, qmin, qmax):
    q = torch.clamp(torch.round(w / scale + zero), qmin, qmax)
    return scale * (q - zero)


def gptq(W, H, bits=4, group=128, block=128, sym=True, actorder=False, percdamp=0.01):
    W = W.clone()
    H = H.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols, device=W.device)
    H[idx, idx] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    loss = torch.zeros(W.shape[0], device=W.device)
    scale = zero = None
    qmin = qmax = 0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if group > 0 and (i1 + i) % group == 0 or scale is None:
                g = group if group > 0 else cols
                span = W1[:, i:i + g] if i + g <= count else torch.cat(
                    [W1[:, i:], W[:, i2:i1 + i + g]], dim=1)
                scale, zero, qmin, qmax = fit(span, bits, sym)
            q = quantize(w, scale, zero, qmin, qmax)
            Q1[:, i] = q
            loss += (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q, loss.sum().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x4096,14336x4096,4096x14336")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--actorder", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda"
    print(f"device       {torch.cuda.get_device_name()}  (torch {torch.__version__})")
    print(f"format       int{args.bits} g{args.group} {'asym' if args.asym else 'sym'}, "
          f"block {args.block}{' actorder' if args.actorder else ''}, {args.repeat} timed repeats (median)")
    for shape in args.shapes.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        W, H = generate(rows, cols, device)
        torch.cuda.synchronize()
        run = lambda: gptq(W, H, args.bits, args.group, args.block, not args.asym, args.actorder)
        run()  # warm-up
        times = []
        for _ in range(args.repeat):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            Q, loss = run()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = torch.cuda.max_memory_allocated() / 1e9
        print(f"{rows} x {cols}: torch gptq {statistics.median(times):.2f} ms "
              f"(min {min(times):.2f}, max {max(times):.2f}); loss {loss:.4g}; peak {peak:.2f} GB")
        del W, H, Q
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()

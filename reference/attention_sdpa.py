#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at tokenmill's attention benchmark shapes, for scripts/attn-bench.sh.

Causal, bf16, q/k/v as GPT-2 makes them (views of one (B, T, 3C) c_attn output, split and transposed to
(B, NH, T, HS) without copies), each backend forced with torch.nn.attention.sdpa_kernel: cuDNN, flash
(FlashAttention-2) and memory-efficient. Forward: one SDPA call. Backward: torch.autograd.grad of that output with
respect to q, k, v (leaves that are the strided views), so the time is the backend's backward kernels alone, no
gradient assembly into the qkv buffer. Each timing is the median of --reps runs after --warmup, every run between
its own pair of CUDA events. Inputs: standard normal (never zeros).

Prints one line per (backend, shape): `ATTN torch-<backend> B T NH HS fwd_ms bwd_ms` (`nan` where the backend
refuses the shape), the format `tokenmill bench attention` also prints.

    python3 reference/attention_sdpa.py [--reps 30] [--warmup 5]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (B, T, NH, HS): the 124M micro-batch and T = 256, 512, 2048 at the same 65,536 tokens (src/bench/attention.rs).
SHAPES = [(64, 1024, 12, 64), (256, 256, 12, 64), (128, 512, 12, 64), (32, 2048, 12, 64)]
BACKENDS = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION)]


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    for (B, T, NH, HS) in SHAPES:
        C = NH * HS
        qkv = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        q, k, v = (x.view(B, T, NH, HS).transpose(1, 2).detach().requires_grad_() for x in qkv.split(C, dim=2))
        dy = torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16)
        for name, backend in BACKENDS:
            fwd = bwd = float("nan")
            try:
                with sdpa_kernel([backend]):
                    fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.warmup, args.reps)
                    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    bwd = timed(lambda: torch.autograd.grad(y, (q, k, v), dy, retain_graph=True), args.warmup,
                                args.reps)
                    del y
            except RuntimeError as e:  # a backend that does not take this shape
                print(f"# {name} B={B} T={T}: {str(e).splitlines()[0]}", flush=True)
            print(f"ATTN torch-{name} {B} {T} {NH} {HS} {fwd:.4f} {bwd:.4f}", flush=True)
        del qkv, q, k, v, dy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

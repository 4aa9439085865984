#!/usr/bin/env python3
"""The PyTorch reference for `tokenmill bench compare`: GPT-2 training steps timed with build-nanogpt's recipe.

Written for tokenmill (not copied) after karpathy/build-nanogpt's train_gpt2.py, keeping every choice that affects
speed: the GPT-2 module (fused qkv `c_attn`, `F.scaled_dot_product_attention(is_causal=True)`, tanh-GELU MLP, pre-LN,
lm_head tied to wte, vocabulary padded to 50304), TF32 matmuls (`set_float32_matmul_precision("high")`),
`torch.compile`, bf16 autocast around the forward pass, fused AdamW (betas 0.9/0.95, eps 1e-8) with weight decay 0.1
on 2-D tensors only, gradient accumulation up to the total batch (loss / accumulation steps), `clip_grad_norm_` to
1.0, and the warmup + cosine learning rate set before every step. Each micro-batch is moved host -> device the way
DataLoaderLite's batches are. Tokens are synthetic: uniform random ids from a seeded generator.

Timing: `--warmup` untimed steps (torch.compile compiles during the first), then `--steps` steps, each between two
`torch.cuda.synchronize()` calls (no-ops on CPU), with `time.perf_counter`. tokens/s = total batch / median step.
Peak memory: `torch.cuda.max_memory_allocated()` (bytes in tensors, since the process started) on CUDA, peak RSS on
CPU. Progress goes to stderr; the last stdout line is one JSON object for `tokenmill bench compare`.

    python reference/train_gpt2_ref.py --model 124m --batch 64 --seq-len 1024 --total-batch 524288
    python reference/train_gpt2_ref.py --model tiny --batch 4 --seq-len 64 --total-batch 512 \\
        --device cpu --dtype fp32 --no-compile --warmup 1 --steps 3          # quick local check, no GPU
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass

# (n_layer, n_head, n_embd, block_size): the GPT-2 sizes, and tokenmill's `tiny` preset.
PRESETS = {
    "124m": (12, 12, 768, 1024),
    "350m": (24, 16, 1024, 1024),
    "774m": (36, 20, 1280, 1024),
    "1558m": (48, 25, 1600, 1024),
    "tiny": (2, 2, 64, 64),
}
GPT2_VOCAB = 50257  # real token ids; the embedding is padded to --vocab-size rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="124m", choices=sorted(PRESETS), help="size preset (default 124m)")
    p.add_argument("--n-layer", type=int, help="override the preset's L")
    p.add_argument("--n-head", type=int, help="override the preset's NH")
    p.add_argument("--n-embd", type=int, help="override the preset's C")
    p.add_argument("--block-size", type=int, help="override the preset's maximum T")
    p.add_argument("--vocab-size", type=int, default=50304, help="embedding rows (50257 padded to a multiple of 64)")
    p.add_argument("--batch", type=int, default=64, help="micro-batch B")
    p.add_argument("--seq-len", type=int, default=1024, help="T")
    p.add_argument("--total-batch", type=int, default=524288, help="tokens per optimizer step (2**19)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 = autocast around the forward")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--compile", dest="compile", action="store_true", help="torch.compile the model (default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly (default on CPU)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false", help="keep fp32 matmuls in full fp32")
    p.set_defaults(compile=None, tf32=True)
    args = p.parse_args(argv)
    n_layer, n_head, n_embd, block_size = PRESETS[args.model]
    for name, preset_value in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd), ("block_size", block_size)):
        if getattr(args, name) is None:
            setattr(args, name, preset_value)
    for name in ("batch", "seq_len", "total_batch", "steps", "n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.seq_len > args.block_size:
        p.error(f"--seq-len {args.seq_len} is longer than the block size {args.block_size}")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.total_batch % (args.batch * args.seq_len):
        p.error(f"--total-batch {args.total_batch} is not divisible by B * T = {args.batch * args.seq_len}")
    return args


try:
    import torch
    import torch.nn as nn
    from torch.nn import functional as F
except ImportError:  # argparse's --help and errors above still work without torch
    torch = None
    nn = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int


if nn is not None:

    class CausalSelfAttention(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.n_head = cfg.n_head
            self.n_embd = cfg.n_embd
            self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads in one matmul
            self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
            self.c_proj.residual_init = True

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
            hs = C // self.n_head
            q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, NH, T, HS)
            k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, NH, T, HS)
            v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, NH, T, HS)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash attention where available
            y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
            self.c_proj.residual_init = True

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.ln_1 = nn.LayerNorm(cfg.n_embd)
            self.attn = CausalSelfAttention(cfg)
            self.ln_2 = nn.LayerNorm(cfg.n_embd)
            self.mlp = MLP(cfg)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.cfg = cfg
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                    wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                    h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                    ln_f=nn.LayerNorm(cfg.n_embd),
                )
            )
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # tied, as GPT-2
            self.apply(self._init_weights)

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                std = 0.02
                if getattr(module, "residual_init", False):
                    std *= (2 * self.cfg.n_layer) ** -0.5  # two residual writes per block
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets):
            B, T = idx.size()
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            return logits, loss

        def configure_optimizers(self, weight_decay: float, lr: float, device_type: str):
            params = {n: p for n, p in self.named_parameters() if p.requires_grad}
            decay = [p for p in params.values() if p.dim() >= 2]
            no_decay = [p for p in params.values() if p.dim() < 2]
            groups = [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
            fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
            extra = {"fused": True} if fused else {}
            opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **extra)
            return opt, fused


# build-nanogpt's schedule: linear warmup over 715 steps, cosine to 10% at 19073 steps.
MAX_LR, MIN_LR, LR_WARMUP, LR_STEPS = 6e-4, 6e-5, 715, 19073


def get_lr(step: int) -> float:
    if step < LR_WARMUP:
        return MAX_LR * (step + 1) / LR_WARMUP
    if step > LR_STEPS:
        return MIN_LR
    ratio = (step - LR_WARMUP) / (LR_STEPS - LR_WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (MAX_LR - MIN_LR)


def time_steps(train_step, warmup: int, steps: int, device):
    """Run `warmup` untimed then `steps` timed calls of `train_step(step) -> loss tensor`, each between two
    synchronizations of `device` (none on CPU); (step times in ms, last loss), or None after a non-finite loss."""
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    times_ms = []
    loss = float("nan")
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        loss_t = train_step(step)
        sync()
        dt = time.perf_counter() - t0
        loss = loss_t.item()  # after the synchronize: a copy, not a wait
        if not math.isfinite(loss):
            log(f"step {step}: loss {loss}")
            return None
        is_timed = step >= warmup
        if is_timed:
            times_ms.append(dt * 1e3)
        log(f"step {step:4d} | loss {loss:.6f} | {dt * 1e3:9.2f} ms | {'timed' if is_timed else 'warm-up'}")
    return times_ms, loss


def peak_memory(device):
    """(bytes, how measured): torch's allocator high-water mark on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def main(argv=None) -> int:
    args = parse_args(argv)
    if torch is None:
        log("train_gpt2_ref.py needs PyTorch: pip install torch")
        return 2
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    device_type = device.type
    cuda = device_type == "cuda"
    if args.compile is None:
        args.compile = cuda
    if cuda and device.index is not None:
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)
    if cuda:
        torch.cuda.manual_seed(args.seed)
    if args.tf32:
        torch.set_float32_matmul_precision("high")

    B, T = args.batch, args.seq_len
    grad_accum = args.total_batch // (B * T)
    cfg = GPTConfig(args.block_size, args.vocab_size, args.n_layer, args.n_head, args.n_embd)
    model = GPT(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer, fused = model.configure_optimizers(weight_decay=0.1, lr=MAX_LR, device_type=device_type)
    if args.compile:
        model = torch.compile(model)
    autocast = (
        (lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        if args.dtype == "bf16"
        else contextlib.nullcontext
    )
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    log(
        f"reference: torch {torch.__version__} on {device_name}; L={cfg.n_layer} NH={cfg.n_head} C={cfg.n_embd} "
        f"V={cfg.vocab_size}, {n_params} parameters; B={B} T={T} total batch {args.total_batch} "
        f"({grad_accum} micro-steps); {args.dtype}, compile={args.compile}, tf32={args.tf32}, fused AdamW={fused}"
    )

    # One host buffer of B*T+1 ids per micro-step (x = buf[:-1], y = buf[1:], DataLoaderLite's layout),
    # reused every step, moved to the device at each micro-step as DataLoaderLite's batches are.
    gen = torch.Generator().manual_seed(args.seed)
    token_range = min(GPT2_VOCAB, cfg.vocab_size)
    host = [torch.randint(0, token_range, (B * T + 1,), generator=gen, dtype=torch.long) for _ in range(grad_accum)]

    def train_step(step: int):
        optimizer.zero_grad()
        loss_accum = torch.zeros((), device=device)
        for micro in range(grad_accum):
            buf = host[micro]
            x = buf[:-1].view(B, T).to(device)
            y = buf[1:].view(B, T).to(device)
            with autocast():
                _, loss = model(x, y)
            loss = loss / grad_accum  # the gradient of the mean over the whole batch
            loss_accum += loss.detach()
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = get_lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        return loss_accum, norm

    timed = time_steps(lambda step: train_step(step)[0], args.warmup, args.steps, device)
    if timed is None:
        return 1
    times_ms, loss = timed
    median_ms = statistics.median(times_ms)
    peak_bytes, peak_source = peak_memory(device)
    result = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": device_name,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size,
        "params": n_params,
        "batch": B,
        "seq_len": T,
        "total_batch": args.total_batch,
        "grad_accum": grad_accum,
        "dtype": args.dtype,
        "compile": args.compile,
        "tf32": args.tf32,
        "fused_adamw": fused,
        "warmup": args.warmup,
        "steps": args.steps,
        "step_ms": times_ms,
        "ms_per_step_median": median_ms,
        "ms_per_step_mean": statistics.fmean(times_ms),
        "tokens_per_s": args.total_batch / (median_ms / 1e3),
        "peak_memory_bytes": peak_bytes,
        "memory_source": peak_source,
        "loss": loss,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

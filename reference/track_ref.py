#!/usr/bin/env python3
"""PyTorch reference run for tokenmill's end-to-end loss tracking (scripts/gpu-correctness.sh).

Trains build-nanogpt's GPT-2 from *tokenmill's own initial weights* on *the same shards in the same order* with the
same hyperparameters, and writes its per-step train loss in tokenmill's log.txt format ("{step} train {loss:.6f}"),
so the two loss curves can be compared step by step (`track_ref.py compare`).

    tokenmill train --config configs/tiny-cpu.toml --data DIR --max-steps 50 --save-init --log-dir LOG ...
    python reference/track_ref.py train --init LOG/checkpoints/step_000000 --steps 50 --device cpu \\
        --dtype fp32 --out ref.txt
    python reference/track_ref.py compare LOG/log.txt ref.txt --tol 1e-4

Everything that decides the numbers comes from the checkpoint tokenmill wrote with `--save-init`:
- state.json: the model sizes (`model`) and the resolved run config (`config`: data dir, B, T, total batch,
  AdamW betas/eps/weight decay, warmup, max_steps, max_lr, min_lr_ratio, grad_clip). `--data` overrides the data dir
  (the checkpoint stores the path as tokenmill was given it).
- model.safetensors: fp32 weights under tokenmill's names, which are HF GPT-2's without the `transformer.` prefix,
  in nn.Linear's (out, in) layout (tokenmill transposes only at the HF boundary, src/model/hf.rs), with the padded
  vocabulary (50304 rows). They load into build-nanogpt's module as they are; lm_head is tied to wte.

The recipe is build-nanogpt's train_gpt2.py: pre-LN blocks, fused qkv, F.scaled_dot_product_attention(is_causal),
tanh GELU, tied head, F.cross_entropy over the padded vocabulary; torch.optim.AdamW with weight decay on tensors of
2+ dimensions only; gradient accumulation (loss / micro-steps); clip_grad_norm_; warmup + cosine lr set before each
step; bf16 autocast around the forward when --dtype bf16. No torch.compile (it changes kernels, not the math), and
fp32 matmuls stay in full fp32 (no TF32) unless --tf32: tokenmill's fp32 is full fp32.

Data: DataLoaderLite's order over the manifest's train shards (llm.c .bin: 1024-byte header of 256 int32, magic
20240520, version 1, token count; then uint16 tokens): batch k of a shard is tokens[k*B*T : k*B*T + B*T + 1]; when the
next batch would not fit, the next shard (wrapping after the last). tokenmill's loader without shuffle_seed does
exactly this for one process (src/shards/loader.rs); a shuffled config is refused here.

Standard library + torch only (the GPU machine's /opt/torch venv has no numpy/safetensors guarantee).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import sys

try:
    import torch
    import torch.nn as nn
    from torch.nn import functional as F
except ImportError:  # `compare` needs no torch
    torch = None
    nn = None

SHARD_MAGIC_U16, SHARD_VERSION_U16, HEADER_BYTES = 20240520, 1, 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    log(f"track_ref.py: {msg}")
    sys.exit(2)


# ---------------------------------------------------------------------------------------------------------- inputs


def read_safetensors(path: str) -> dict:
    """name -> fp32 CPU tensor, from a safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        fail(f"{path}: bad safetensors header: {e}")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            fail(f"{path}: tensor {name} is {info['dtype']}; tokenmill checkpoints hold F32 master weights")
        start, end = info["data_offsets"]
        buf = bytearray(data[8 + n + start : 8 + n + end])  # a writable copy: frombuffer warns on read-only bytes
        out[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(info["shape"]).clone()
    return out


def read_shard(path: str) -> "torch.Tensor":
    """An llm.c uint16 shard's tokens as int64."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_BYTES:
        fail(f"{path}: shorter than the {HEADER_BYTES}-byte shard header")
    magic, version, count = struct.unpack("<3i", data[:12])
    if magic != SHARD_MAGIC_U16 or version != SHARD_VERSION_U16:
        fail(f"{path}: header magic {magic} version {version}; expected uint16 shards ({SHARD_MAGIC_U16}, 1)")
    if len(data) != HEADER_BYTES + 2 * count:
        fail(f"{path}: {len(data)} bytes, but the header says {count} tokens ({HEADER_BYTES + 2 * count} bytes)")
    raw = torch.frombuffer(bytearray(data[HEADER_BYTES:]), dtype=torch.int16)
    return (raw.to(torch.int64) & 0xFFFF).contiguous()


class DataLoaderLite:
    """build-nanogpt's loader for one process over the manifest's train shards, in order."""

    def __init__(self, data_dir: str, B: int, T: int):
        manifest_path = os.path.join(data_dir, "manifest.json")
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
        except OSError as e:
            fail(f"{manifest_path}: {e} (the directory `tokenmill prep` wrote)")
        if manifest.get("token_width", "u16") != "u16":
            fail(f"{manifest_path}: token_width {manifest.get('token_width')}; this reference reads uint16 shards")
        self.files = [os.path.join(data_dir, s["file"]) for s in manifest["shards"] if s["split"] == "train"]
        if not self.files:
            fail(f"{manifest_path}: no train shards")
        self.B, self.T = B, T
        self.shard = 0
        self.tokens = read_shard(self.files[0])
        self.pos = 0
        if len(self.tokens) < B * T + 1:
            fail(f"{self.files[0]}: {len(self.tokens)} tokens, fewer than one batch of B*T+1 = {B * T + 1}")

    def next_batch(self):
        B, T = self.B, self.T
        buf = self.tokens[self.pos : self.pos + B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.pos += B * T
        if self.pos + B * T + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.files)
            self.tokens = read_shard(self.files[self.shard])
            if len(self.tokens) < B * T + 1:
                fail(f"{self.files[self.shard]}: {len(self.tokens)} tokens, fewer than one batch of {B * T + 1}")
            self.pos = 0
        return x, y


# ----------------------------------------------------------------------------------------------------------- model

if nn is not None:

    class CausalSelfAttention(nn.Module):
        def __init__(self, n_embd: int, n_head: int):
            super().__init__()
            self.n_head, self.n_embd = n_head, n_embd
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # q, k, v stacked, as tokenmill's c_attn (3C, C)
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            hs = C // self.n_head
            q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, NH, T, HS)
            k = k.view(B, T, self.n_head, hs).transpose(1, 2)
            v = v.view(B, T, self.n_head, hs).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self, n_embd: int):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self, n_embd: int, n_head: int):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)  # eps 1e-5, tokenmill's LAYER_NORM_EPS
            self.attn = CausalSelfAttention(n_embd, n_head)
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = MLP(n_embd)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, m: dict):
            super().__init__()
            C, V = m["n_embd"], m["vocab_size"]
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(V, C),
                    wpe=nn.Embedding(m["block_size"], C),
                    h=nn.ModuleList([Block(C, m["n_head"]) for _ in range(m["n_layer"])]),
                    ln_f=nn.LayerNorm(C),
                )
            )
            self.lm_head = nn.Linear(C, V, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # tied, as tokenmill's wte

        def forward(self, idx, targets):
            B, T = idx.size()
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V), padded vocabulary as tokenmill
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def load_init(model: "GPT", weights: dict, path: str) -> None:
    """Copy tokenmill's tensors into the module: `transformer.` + tokenmill name, same layout; every parameter
    must be covered and nothing left over (a size mismatch is an error naming the tensor)."""
    own = dict(model.transformer.named_parameters())
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        fail(f"{path}: tensors do not match a GPT-2 of this size (missing {missing[:5]}, unexpected {extra[:5]})")
    with torch.no_grad():
        for name, p in own.items():
            w = weights[name]
            if tuple(w.shape) != tuple(p.shape):
                fail(f"{path}: {name} has shape {tuple(w.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(w)


def get_lr(step: int, o: dict) -> float:
    """tokenmill's LrSchedule (= build-nanogpt's get_lr) from the config's [optim] section."""
    max_lr, warmup, max_steps = o["max_lr"], o["warmup_steps"], o["max_steps"]
    min_lr = max_lr * o["min_lr_ratio"]
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step > max_steps or max_steps == warmup:
        return min_lr
    ratio = (step - warmup) / (max_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def train(args) -> int:
    if torch is None:
        fail("`train` needs PyTorch (pip install torch)")
    state_path = os.path.join(args.init, "state.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except OSError as e:
        fail(f"{state_path}: {e} (write the initial checkpoint with `tokenmill train ... --save-init`)")
    if state["step"] != 0:
        fail(f"{state_path}: a step-{state['step']} checkpoint; the reference starts from step_000000 (--save-init)")
    m, cfg = state["model"], state["config"]
    if m["arch"] != "gpt2":
        fail(f"{state_path}: a {m['arch']} model; this reference is GPT-2")
    d, o = cfg["data"], cfg["optim"]
    if d.get("shuffle_seed") is not None:
        fail(f"{state_path}: data.shuffle_seed is set; the reference reads in file order (DataLoaderLite)")
    data_dir = args.data or d.get("dir")
    if not data_dir:
        fail(f"{state_path}: no data dir in the config; pass --data DIR")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    if args.deterministic:
        torch.use_deterministic_algorithms(True)

    model = GPT(m)
    load_init(model, read_safetensors(os.path.join(args.init, "model.safetensors")), args.init)
    model.to(device)
    if args.dtype == "fp64":
        model.double()  # weights, grads and AdamW state in double: the rounding-free curve fp32 runs scatter around

    B, T = d["micro_batch"], d["seq_len"]
    if d["total_batch_tokens"] % (B * T):
        fail(f"{state_path}: total_batch_tokens {d['total_batch_tokens']} is not a multiple of B*T = {B * T}")
    accum = d["total_batch_tokens"] // (B * T)
    loader = DataLoaderLite(data_dir, B, T)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o["max_lr"],
        betas=tuple(o["betas"]),
        eps=o["eps"],
    )
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if args.dtype == "bf16"
        else contextlib.nullcontext
    )
    log(
        f"track_ref: torch {torch.__version__} on {torch.cuda.get_device_name(device) if cuda else 'cpu'}; "
        f"L={m['n_layer']} NH={m['n_head']} C={m['n_embd']} V={m['vocab_size']} from {args.init}; B={B} T={T} "
        f"accum={accum}; {args.dtype}; data {data_dir} ({len(loader.files)} train shards)"
    )
    steps = args.steps if args.steps is not None else o["max_steps"]
    return train_steps(model, params, opt, loader, o, steps, accum, autocast, device, args.out)


def train_steps(model, params, opt, loader, o: dict, steps: int, accum: int, autocast, device, out) -> int:
    """`steps` optimizer steps of `accum` micro-batches from `loader` (`model(x, y)` -> mean loss), clipping and the
    schedule from the config's [optim] `o`; the "{step} train {loss}" lines written to `out` (stdout if None).
    Returns the exit status (1 after a non-finite loss). Shared by the GPT-2 and Llama references."""
    lines = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for _ in range(accum):
            x, y = loader.next_batch()
            x, y = x.to(device), y.to(device)
            with autocast():
                loss = model(x, y)
            loss = loss / accum
            loss_accum += loss.detach().float()
            loss.backward()
        clip = o["grad_clip"]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        lr = get_lr(step, o)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_v = loss_accum.item()
        if not math.isfinite(loss_v):
            log(f"step {step}: loss {loss_v}")
            return 1
        opt.step()
        lines.append(f"{step} train {loss_v:.6f}")
        log(f"step {step:5d} | loss {loss_v:.6f} | lr {lr:.4e} | norm {norm.item():.4f}")
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------------------------------------- compare


def read_train_losses(path: str) -> dict:
    """step -> loss from the "{step} train {loss}" lines of a log.txt (other lines ignored)."""
    out = {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) == 3 and parts[1] == "train":
                    try:
                        out[int(parts[0])] = float(parts[2])
                    except ValueError:
                        fail(f"{path}:{n}: expected `STEP train LOSS`, found `{line.strip()}`")
    except OSError as e:
        fail(f"{path}: {e}")
    if not out:
        fail(f"{path}: no `STEP train LOSS` lines")
    return out


def compare(args) -> int:
    """Max |loss_a - loss_b| over the first --steps steps (both logs must have them), against --tol; with
    --tight-steps K, also the first K steps against --tight-tol. Exit 1 past either.

    Two windows because training amplifies rounding: two fp32 runs of the same math (tokenmill and PyTorch, or
    either against PyTorch in fp64) agree to ~1e-6 for dozens of steps, then drift apart by 1e-4..1e-3 as Adam turns
    rounding-level differences in near-zero gradients into lr-sized updates. Early steps test the implementation;
    the whole run bounds the drift. With --median-tol, the median |diff| over all steps too: bf16 runs can differ by
    a one-step spike on a batch of rare tokens (seen: tiny config, CPU, step 43, 0.37 for tokenmill bf16 and 0.017
    for PyTorch bf16 against fp32; PyTorch evaluating tokenmill's step-43 weights in fp32 gives tokenmill's loss, so
    the weights differ, not the forward), and the median says whether the curves track apart from such steps."""
    a, b = read_train_losses(args.a), read_train_losses(args.b)
    n = args.steps if args.steps is not None else min(len(a), len(b))
    missing = [s for s in range(n) if s not in a or s not in b]
    if missing:
        fail(f"step {missing[0]} is missing from {args.a if missing[0] not in a else args.b} (comparing {n} steps)")
    diffs = [abs(a[s] - b[s]) for s in range(n)]

    def window(k: int, tol: float):
        worst = max(range(k), key=lambda s: diffs[s])
        first_bad = next((s for s in range(k) if diffs[s] > tol), None)
        return worst, first_bad

    worst, bad = window(n, args.tol)
    ok = bad is None
    parts = [
        f"max |loss diff| {diffs[worst]:.2e} at step {worst} ({a[worst]:.6f} vs {b[worst]:.6f}) over {n} steps "
        f"(tol {args.tol:.0e}" + ("" if bad is None else f", first over: step {bad}") + ")"
    ]
    if args.tight_steps:
        k = min(args.tight_steps, n)
        tworst, tbad = window(k, args.tight_tol)
        ok = ok and tbad is None
        parts.append(
            f"{diffs[tworst]:.2e} over steps 0-{k - 1} (tol {args.tight_tol:.0e}"
            + ("" if tbad is None else f", first over: step {tbad}")
            + ")"
        )
    median = sorted(diffs)[n // 2]
    if args.median_tol:
        ok = ok and median <= args.median_tol
        parts.append(f"median {median:.2e} (tol {args.median_tol:.0e})")
    else:
        parts.append(f"median {median:.2e}")
    label = f"{args.label}: " if args.label else ""
    print(f"{'PASS' if ok else 'FAIL'} {label}" + "; ".join(parts) + f"; loss {a[0]:.4f} -> {a[n - 1]:.4f}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train from a tokenmill step_000000 checkpoint, print per-step losses")
    t.add_argument("--init", required=True, help="the checkpoint `tokenmill train --save-init` wrote (step_000000)")
    t.add_argument("--data", help="shard directory (default: the config's data.dir)")
    t.add_argument("--steps", type=int, help="optimizer steps to run (default: optim.max_steps)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    t.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp64"],
        default="fp32",
        help="bf16 = autocast around the forward; fp64 = the whole run in double (how far fp32 itself drifts)",
    )
    t.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls (off: full fp32 as tokenmill)")
    t.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    t.add_argument("--out", help="write the `STEP train LOSS` lines here (default stdout)")
    c = sub.add_parser("compare", help="max per-step |loss diff| of two log.txt files")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, required=True, help="largest |diff| allowed at any step")
    c.add_argument("--tight-steps", type=int, default=0, help="also hold the first K steps to --tight-tol")
    c.add_argument("--tight-tol", type=float, default=0.0, help="largest |diff| allowed in the first K steps")
    c.add_argument("--median-tol", type=float, default=0.0, help="largest median |diff| over all steps")
    c.add_argument("--steps", type=int, help="compare steps 0..N-1 (default: all steps both have)")
    c.add_argument("--label", default="", help="prefix of the result line")
    args = p.parse_args(argv)
    return train(args) if args.cmd == "train" else compare(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The PyTorch reference for Llama-style models: HF transformers' `LlamaForCausalLM` trained with the recipe tokenmill's
GPT-2 reference uses, for `tokenmill bench compare --model llama-*` and for end-to-end loss tracking.

Written for tokenmill (not copied). The model is transformers' own `LlamaForCausalLM` with
`attn_implementation="sdpa"` (F.scaled_dot_product_attention: FlashAttention or cuDNN kernels), sized as tokenmill's
preset: RMSNorm (eps 1e-5), rotary positions (theta from --rope-theta), SwiGLU MLP of width --ffn-hidden, grouped-query
attention (--n-kv-head), no biases, the lm_head tied to the embedding unless --untied, vocabulary padded to
--vocab-size. Init as tokenmill's: N(0, 0.02) everywhere, o_proj and down_proj scaled by (2 L)^-0.5, norm gains 1.
The recipe is build-nanogpt's: TF32 matmuls, torch.compile (of the model and the loss), bf16 autocast over fp32 master
weights, fused AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D tensors only), gradient accumulation up to the
total batch, clip_grad_norm_ to 1.0, warmup + cosine learning rate. The loss is F.cross_entropy over the logits of
every position (what LlamaForCausalLM computes from `labels`, without its internal shift: the targets come shifted).

Two modes:

  bench (default): timed training steps on synthetic tokens, the last stdout line one JSON object
  (`tokens_per_s`, `ms_per_step_median`, `peak_memory_bytes`, ...), as reference/train_gpt2_ref.py prints for GPT-2.
    python reference/train_llama_ref.py --n-layer 12 --n-head 12 --n-embd 768 --ffn-hidden 2048 --batch 32
    python reference/train_llama_ref.py --n-layer 2 --n-head 2 --n-embd 64 --ffn-hidden 192 --block-size 64 \\
        --batch 4 --seq-len 64 --total-batch 512 --device cpu --dtype fp32 --no-compile --warmup 1 --steps 3

  track: trains from tokenmill's own step-0 weights (`tokenmill train ... --save-init`) on the same shards in the same
  order and writes the per-step train loss in tokenmill's log.txt format; `reference/track_ref.py compare` compares
  the two curves (scripts/gpu-correctness.sh llama). No torch.compile here (it changes kernels, not the math).
    python reference/train_llama_ref.py track --init LOG/checkpoints/step_000000 --steps 50 --out ref.txt

Timing (bench): --warmup untimed steps (compilation happens in the first), then --steps steps, each between two
torch.cuda.synchronize() calls; tokens/s = total batch / median step. Peak memory: torch.cuda.max_memory_allocated().
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import track_ref  # noqa: E402  (the shard reader, DataLoaderLite, the schedule and the safetensors reader)
import train_gpt2_ref  # noqa: E402  (the timed-steps loop and the peak-memory reading)

try:
    import torch
    from torch.nn import functional as F
except ImportError:  # argparse's --help and errors still work without torch
    torch = None

GPT2_VOCAB = 50257  # real token ids; the embedding is padded to --vocab-size rows
# build-nanogpt's schedule for the timed steps (bench): linear warmup over 715 steps, cosine to 10% at 19073.
BENCH_OPTIM = {"max_lr": 6e-4, "min_lr_ratio": 0.1, "warmup_steps": 715, "max_steps": 19073}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_hidden(c: int) -> int:
    """tokenmill's SwiGLU width when unset: 8C/3 rounded up to a multiple of 64 (2048 for C = 768)."""
    h = -(-8 * c // 3)
    return -(-h // 64) * 64


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--n-kv-head", type=int, help="KV heads (grouped-query attention); default: n-head")
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--ffn-hidden", type=int, help="SwiGLU width; default: 8C/3 rounded up to a multiple of 64")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=50304, help="embedding rows (50257 padded to a multiple of 64)")
    p.add_argument("--untied", action="store_true", help="a separate lm_head (tie_word_embeddings = false)")


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "track":
        p = argparse.ArgumentParser(description="loss tracking from tokenmill's step-0 checkpoint")
        p.add_argument("mode", choices=["track"])
        p.add_argument("--init", required=True, help="tokenmill's step_000000 (train --save-init)")
        p.add_argument("--data", help="shard directory (default: the checkpoint config's data.dir)")
        p.add_argument("--steps", type=int, help="steps to run (default: the config's max_steps)")
        p.add_argument("--device", default="cuda")
        p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
        p.add_argument("--tf32", action="store_true", help="let fp32 matmuls use TF32")
        p.add_argument("--out", help="write the loss lines here (default: stdout)")
        return p.parse_args(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--batch", type=int, default=32, help="micro-batch B")
    p.add_argument("--seq-len", type=int, default=1024, help="T")
    p.add_argument("--total-batch", type=int, default=524288, help="tokens per optimizer step (2**19)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 = autocast around the forward")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--compile", dest="compile", action="store_true", help="torch.compile (default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly (default on CPU)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false", help="keep fp32 matmuls in full fp32")
    p.set_defaults(compile=None, tf32=True, mode="bench")
    args = p.parse_args(argv)
    for name in ("batch", "seq_len", "total_batch", "steps", "n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.seq_len > args.block_size:
        p.error(f"--seq-len {args.seq_len} is longer than the block size {args.block_size}")
    if args.total_batch % (args.batch * args.seq_len):
        p.error(f"--total-batch {args.total_batch} is not divisible by B * T = {args.batch * args.seq_len}")
    return args


def model_dims(a) -> dict:
    """tokenmill's ModelConfig fields for a Llama-style model, from the bench arguments."""
    kv = a.n_kv_head or a.n_head
    hidden = a.ffn_hidden or default_hidden(a.n_embd)
    if a.n_embd % a.n_head or a.n_head % kv:
        raise SystemExit(f"n_embd {a.n_embd} must divide into {a.n_head} heads, and {kv} KV heads divide {a.n_head}")
    return {
        "n_layer": a.n_layer,
        "n_head": a.n_head,
        "n_kv_head": kv,
        "n_embd": a.n_embd,
        "ffn_hidden": hidden,
        "rope_theta": a.rope_theta,
        "block_size": a.block_size,
        "vocab_size": a.vocab_size,
        "tied": not a.untied,
    }


def build_model(m: dict, device):
    """HF's LlamaForCausalLM of tokenmill's shape, initialised as tokenmill initialises (see the module doc)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["n_embd"],
        intermediate_size=m["ffn_hidden"],
        num_hidden_layers=m["n_layer"],
        num_attention_heads=m["n_head"],
        num_key_value_heads=m["n_kv_head"],
        head_dim=m["n_embd"] // m["n_head"],
        max_position_embeddings=m["block_size"],
        rms_norm_eps=1e-5,
        rope_theta=m["rope_theta"],
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=m["tied"],
        initializer_range=0.02,
        use_cache=False,
    )
    # transformers 5 keeps the rotary base in rope_parameters; older versions read rope_theta.
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = m["rope_theta"]
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        scale = (2 * m["n_layer"]) ** -0.5
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(scale)  # residual projections, as tokenmill and GPT-2
            layer.mlp.down_proj.weight.mul_(scale)
    return model.to(device)


class LossModel(torch.nn.Module if torch is not None else object):
    """LlamaForCausalLM's logits and the mean cross-entropy against already-shifted targets, one module for
    torch.compile."""

    def __init__(self, llama):
        super().__init__()
        self.llama = llama

    def forward(self, idx, targets):
        logits = self.llama(input_ids=idx, use_cache=False).logits  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def optimizer(model, o: dict, fused: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    extra = {"fused": True} if fused else {}
    groups = [{"params": decay, "weight_decay": o.get("weight_decay", 0.1)}, {"params": no_decay, "weight_decay": 0.0}]
    betas = tuple(o.get("betas", (0.9, 0.95)))
    return torch.optim.AdamW(groups, lr=o["max_lr"], betas=betas, eps=o.get("eps", 1e-8), **extra), params


def bench(args) -> int:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.compile is None:
        args.compile = cuda
    if cuda and device.index is not None:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    m = model_dims(args)
    B, T = args.batch, args.seq_len
    accum = args.total_batch // (B * T)
    llama = build_model(m, device)
    n_params = sum(p.numel() for p in llama.parameters())
    opt, params = optimizer(llama, BENCH_OPTIM, fused=cuda)
    step_model = LossModel(llama)
    if args.compile:
        step_model = torch.compile(step_model)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if args.dtype == "bf16"
        else contextlib.nullcontext
    )
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    import transformers

    log(
        f"reference: torch {torch.__version__}, transformers {transformers.__version__} LlamaForCausalLM (sdpa) on "
        f"{name}; L={m['n_layer']} NH={m['n_head']} KV={m['n_kv_head']} C={m['n_embd']} H={m['ffn_hidden']} "
        f"V={m['vocab_size']} tied={m['tied']}, {n_params} parameters; B={B} T={T} total batch {args.total_batch} "
        f"({accum} micro-steps); {args.dtype}, compile={args.compile}, tf32={args.tf32}, fused AdamW={cuda}"
    )
    gen = torch.Generator().manual_seed(args.seed)
    token_range = min(GPT2_VOCAB, m["vocab_size"])
    host = [torch.randint(0, token_range, (B * T + 1,), generator=gen, dtype=torch.long) for _ in range(accum)]

    def train_step(step: int):
        opt.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro in range(accum):
            buf = host[micro]
            x, y = buf[:-1].view(B, T).to(device), buf[1:].view(B, T).to(device)
            with autocast():
                loss = step_model(x, y)
            loss = loss / accum
            loss_accum += loss.detach()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = track_ref.get_lr(step, BENCH_OPTIM)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        return loss_accum

    timed = train_gpt2_ref.time_steps(train_step, args.warmup, args.steps, device)
    if timed is None:
        return 1
    times_ms, loss = timed
    median_ms = statistics.median(times_ms)
    peak, source = train_gpt2_ref.peak_memory(device)
    result = {
        "impl": "hf-llama",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": name,
        **m,
        "params": n_params,
        "batch": B,
        "seq_len": T,
        "total_batch": args.total_batch,
        "grad_accum": accum,
        "dtype": args.dtype,
        "compile": args.compile,
        "tf32": args.tf32,
        "fused_adamw": cuda,
        "warmup": args.warmup,
        "steps": args.steps,
        "step_ms": times_ms,
        "ms_per_step_median": median_ms,
        "ms_per_step_mean": statistics.fmean(times_ms),
        "tokens_per_s": args.total_batch / (median_ms / 1e3),
        "peak_memory_bytes": peak,
        "memory_source": source,
        "loss": loss,
    }
    print(json.dumps(result), flush=True)
    return 0


def hf_name(name: str) -> str:
    """tokenmill's Llama parameter names are HF's without the `model.` prefix (lm_head.weight stays)."""
    return name if name == "lm_head.weight" else "model." + name


def track(args) -> int:
    state_path = os.path.join(args.init, "state.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except OSError as e:
        track_ref.fail(f"{state_path}: {e} (write the initial checkpoint with `tokenmill train ... --save-init`)")
    if state["step"] != 0:
        track_ref.fail(f"{state_path}: a step-{state['step']} checkpoint; the reference starts from step_000000")
    mc, cfg = state["model"], state["config"]
    if mc["arch"] != "llama":
        track_ref.fail(f"{state_path}: a {mc['arch']} model; this reference is Llama-style")
    d, o = cfg["data"], cfg["optim"]
    if d.get("shuffle_seed") is not None:
        track_ref.fail(f"{state_path}: data.shuffle_seed is set; the reference reads in file order (DataLoaderLite)")
    data_dir = args.data or d.get("dir")
    if not data_dir:
        track_ref.fail(f"{state_path}: no data dir in the config; pass --data DIR")
    c = mc["n_embd"]
    m = {
        "n_layer": mc["n_layer"],
        "n_head": mc["n_head"],
        "n_kv_head": mc.get("n_kv_head") or mc["n_head"],
        "n_embd": c,
        "ffn_hidden": mc.get("ffn_hidden") or default_hidden(c),
        "rope_theta": mc.get("rope_theta") or 10000.0,
        "block_size": mc["block_size"],
        "vocab_size": mc["vocab_size"],
        "tied": mc.get("tie_word_embeddings", True) is not False,
    }
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    llama = build_model(m, device)
    weights = track_ref.read_safetensors(os.path.join(args.init, "model.safetensors"))
    own = dict(llama.named_parameters())  # a tied lm_head is not listed separately
    wanted = {hf_name(n): t for n, t in weights.items()}
    missing, extra = sorted(set(own) - set(wanted)), sorted(set(wanted) - set(own))
    if missing or extra:
        track_ref.fail(f"{args.init}: tensors do not match (missing {missing[:5]}, unexpected {extra[:5]})")
    with torch.no_grad():
        for name, p in own.items():
            if tuple(wanted[name].shape) != tuple(p.shape):
                track_ref.fail(f"{args.init}: {name} has shape {tuple(wanted[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(wanted[name].to(device))
    B, T = d["micro_batch"], d["seq_len"]
    accum = d["total_batch_tokens"] // (B * T)
    loader = track_ref.DataLoaderLite(data_dir, B, T)
    opt, params = optimizer(llama, o, fused=False)
    step_model = LossModel(llama)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if args.dtype == "bf16"
        else contextlib.nullcontext
    )
    steps = args.steps if args.steps is not None else o["max_steps"]
    return track_ref.train_steps(step_model, params, opt, loader, o, steps, accum, autocast, device, args.out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if torch is None:
        log("train_llama_ref.py needs PyTorch and transformers: pip install torch transformers")
        return 2
    return track(args) if args.mode == "track" else bench(args)


if __name__ == "__main__":
    sys.exit(main())

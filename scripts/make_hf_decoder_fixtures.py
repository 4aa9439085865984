#!/usr/bin/env python3
"""Make the tiny Hugging Face Llama-family fixtures that tests/hf_models.rs holds tokenmill's import, export and
`train --init` against, with transformers itself on the CPU (no network: the models are built from configs here).

Each fixture is a random model saved by `save_pretrained` (safetensors) plus `reference.safetensors`: `input_ids` int64
(B, T) and `logits` float32 (B, T, V), what transformers computes in float32 for those ids. Every tensor is drawn
from a seeded generator (norm gains around 1, the Qwen2 q/k/v biases included, which transformers would start at
zero), so a swapped, transposed or missing tensor cannot hide.

  llama_gqa_tied/     LlamaForCausalLM: 4 query heads on 2 KV heads, MLP width 48 (not the 8C/3 rule), rotary base
                      500000, RMSNorm eps 1e-5, tied head.
  llama_gqa_untied/   the same shape with an untied head (lm_head.weight), eps 1e-6, saved sharded
                      (model.safetensors.index.json + shards) so the index path is exercised.
  qwen2_gqa/          Qwen2ForCausalLM: q, k, v biases, eps 1e-6, rotary base 1000000, tied head (Qwen2.5's small
                      models are tied).

Usage (from the repo root; CPU torch is enough: `python3 -m venv /work/venvs/hf && /work/venvs/hf/bin/pip install
torch transformers safetensors`):
  python3 scripts/make_hf_decoder_fixtures.py                  # writes tests/fixtures/hf/*
  python3 scripts/make_hf_decoder_fixtures.py --check-export DIR --fixture qwen2_gqa
      load DIR (written by `tokenmill export hf`) with AutoModelForCausalLM and compare its logits on the fixture's
      input with the fixture's reference; exits non-zero past 1e-5 relative (max |diff| / max |logit|).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, POSITIONS = 256, 32, 2, 4, 2, 48, 64
BATCH, SEQ = 2, 16
SEED = 2027
TOLERANCE = 1e-5


def llama(tied, eps, sharded):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
        max_position_embeddings=POSITIONS, rms_norm_eps=eps, hidden_act="silu", attention_bias=False,
        mlp_bias=False, tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg), sharded


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
        rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, bos_token_id=1, eos_token_id=2,
    )
    return Qwen2ForCausalLM(cfg), False


FIXTURES = {
    "llama_gqa_tied": lambda: llama(True, 1e-5, False),
    "llama_gqa_untied": lambda: llama(False, 1e-6, True),
    "qwen2_gqa": qwen2,
}


def randomize(model, seed):
    """Every parameter from a seeded generator: norm gains 1 + N(0, 0.1), everything else N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)


def input_ids():
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def make(name):
    torch.manual_seed(SEED)
    model, sharded = FIXTURES[name]()
    model = model.float()
    randomize(model, SEED)
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    kwargs = {"max_shard_size": "60KB"} if sharded else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    ids = input_ids()
    logits = logits_of(model, ids)
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {sorted(os.listdir(out))}, {size} bytes, logit scale {logits.abs().max():.3f}")


def check_export(directory, fixture):
    from transformers import AutoModelForCausalLM

    ref = load_file(os.path.join(ROOT, fixture, "reference.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    got = logits_of(model, ref["input_ids"])
    want = ref["logits"]
    v = want.shape[-1]
    rel = ((got[..., :v] - want).abs().max() / want.abs().max()).item()
    print(f"{directory} ({type(model).__name__}) vs {fixture}: max |diff| / max |logit| = {rel:.3e}")
    return rel <= TOLERANCE


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-export", metavar="DIR", help="a folder `tokenmill export hf` wrote")
    ap.add_argument("--fixture", choices=sorted(FIXTURES), help="the fixture whose reference DIR must reproduce")
    a = ap.parse_args()
    if a.check_export:
        if not a.fixture:
            ap.error("--check-export needs --fixture")
        sys.exit(0 if check_export(a.check_export, a.fixture) else 1)
    for name in FIXTURES:
        make(name)


if __name__ == "__main__":
    main()

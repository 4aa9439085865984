#!/usr/bin/env python3
"""Make the tiny Hugging Face GPT-2 fixtures that tests/model_pretrained.rs holds tokenmill's loader against.

Both fixtures share one set of seeded random weights (every tensor random, LayerNorm gains and biases included, so
a swapped or untransposed tensor cannot hide) and one seeded input, and store the reference logits next to the
checkpoint in reference.safetensors (`input_ids` int64 (B, T), `logits` float32 (B, T, V)).

  --backend transformers   (default; needs torch + transformers, e.g. on the GPU machine)
      GPT2LMHeadModel(GPT2Config(...)) with those weights, saved by save_pretrained(safe_serialization=True):
      `transformer.`-prefixed keys, no lm_head.weight. Logits are what transformers computes; the script also
      checks them against the numpy reference below (float64) before writing anything.
      -> tests/fixtures/hf_gpt2_tiny/{config.json, model.safetensors, reference.safetensors}

  --backend numpy          (needs only numpy + safetensors)
      The same weights written the way OpenAI's `gpt2` hub repo stores them: bare keys (`h.0.attn.c_attn.weight`)
      plus the old causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`. Logits from a naive float64
      numpy GPT-2 forward.
      -> tests/fixtures/hf_gpt2_tiny/numpy/{config.json, model.safetensors, reference.safetensors}

  --check-export DIR       (needs torch + transformers)
      Load DIR (written by `tokenmill export hf`) with GPT2LMHeadModel.from_pretrained and compare its logits on
      the fixture input with the numpy reference; exits non-zero past 1e-4.

Usage (from the repo root):
  python3 scripts/make_hf_fixture.py                       # transformers fixture
  python3 scripts/make_hf_fixture.py --backend numpy       # numpy fixture
  python3 scripts/make_hf_fixture.py --check-export /tmp/exported
"""
import argparse
import json
import os
import sys

import numpy as np

N_LAYER, N_HEAD, N_EMBD, N_POSITIONS, VOCAB = 2, 4, 32, 64, 512
BATCH, SEQ = 2, 16
SEED = 1234
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf_gpt2_tiny")


def hf_config():
    return dict(
        vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )


def make_weights():
    """HF GPT-2 weights (Conv1D layout: (in, out)), bare keys, float32."""
    rng = np.random.default_rng(SEED)
    C = N_EMBD
    mat = lambda *shape: (rng.standard_normal(shape) * 0.15).astype(np.float32)
    vec = lambda n, mean=0.0: (mean + rng.standard_normal(n) * 0.1).astype(np.float32)
    w = {"wte.weight": mat(VOCAB, C), "wpe.weight": mat(N_POSITIONS, C)}
    for l in range(N_LAYER):
        p = f"h.{l}."
        w[p + "ln_1.weight"], w[p + "ln_1.bias"] = vec(C, 1.0), vec(C)
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = mat(C, 3 * C), vec(3 * C)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = mat(C, C), vec(C)
        w[p + "ln_2.weight"], w[p + "ln_2.bias"] = vec(C, 1.0), vec(C)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = mat(C, 4 * C), vec(4 * C)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = mat(4 * C, C), vec(C)
    w["ln_f.weight"], w["ln_f.bias"] = vec(C, 1.0), vec(C)
    return w


def make_input():
    rng = np.random.default_rng(SEED + 1)
    return rng.integers(0, VOCAB, size=(BATCH, SEQ), dtype=np.int64)


def numpy_forward(w, ids):
    """A naive float64 GPT-2 forward: logits (B, T, V)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    B, T = ids.shape
    C, NH = N_EMBD, N_HEAD
    HS = C // NH

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * g + b

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    for l in range(N_LAYER):
        p = lambda n: w[f"h.{l}.{n}"]
        h = ln(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, NH, HS).transpose(0, 2, 1, 3) for i in range(3))
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HS)
        att = np.where(mask, -np.inf, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = ln(x, p("ln_2.weight"), p("ln_2.bias"))
        x = x + gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = ln(x, w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["wte.weight"].T


def write_reference(out, ids, logits):
    from safetensors.numpy import save_file
    save_file({"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
               "logits": np.ascontiguousarray(logits, dtype=np.float32)},
              os.path.join(out, "reference.safetensors"), metadata={"format": "np"})


def numpy_fixture(out):
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    w = make_weights()
    ids = make_input()
    stored = dict(w)
    tril = np.tril(np.ones((N_POSITIONS, N_POSITIONS), dtype=np.float32)).reshape(1, 1, N_POSITIONS, N_POSITIONS)
    for l in range(N_LAYER):
        stored[f"h.{l}.attn.bias"] = tril
        stored[f"h.{l}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(stored, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(hf_config(), architectures=["GPT2LMHeadModel"], model_type="gpt2", n_ctx=N_POSITIONS)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_reference(out, ids, numpy_forward(w, ids))
    print(f"wrote {out}")


def torch_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.double().numpy()


def transformers_fixture(out):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**hf_config())).eval()
    w = make_weights()
    sd = {f"transformer.{k}": torch.from_numpy(v) for k, v in w.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} | {k for k in missing if k.endswith(".attn.bias")}, missing
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight), "lm_head is not tied to wte"
    ids = make_input()
    logits = torch_logits(model, ids)
    ref = numpy_forward(w, ids)
    diff = np.abs(logits - ref).max()
    print(f"transformers vs numpy float64 reference: max |diff| = {diff:.3e}")
    assert diff < 1e-4, diff
    model.save_pretrained(out, safe_serialization=True)
    write_reference(out, ids, logits)
    from safetensors import safe_open
    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        print("saved keys:", sorted(f.keys())[:6], "...", len(list(f.keys())), "tensors; metadata", f.metadata())
    print(f"wrote {out} (transformers {__import__('transformers').__version__}, torch {torch.__version__})")


def check_export(d):
    from transformers import GPT2LMHeadModel
    model, info = GPT2LMHeadModel.from_pretrained(d, output_loading_info=True)
    model.eval()
    print(f"loading info: {info}")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head not tied"
    ids = make_input()
    logits = torch_logits(model, ids)
    ref = numpy_forward(make_weights(), ids)
    diff = np.abs(logits - ref).max()
    print(f"exported {d}: transformers logits vs numpy reference: max |diff| = {diff:.3e}")
    sys.exit(0 if diff < 1e-4 else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["transformers", "numpy"], default="transformers")
    ap.add_argument("--out", help="output folder (default: tests/fixtures/hf_gpt2_tiny[/numpy])")
    ap.add_argument("--check-export", metavar="DIR")
    a = ap.parse_args()
    if a.check_export:
        check_export(a.check_export)
    elif a.backend == "numpy":
        numpy_fixture(a.out or os.path.join(ROOT, "numpy"))
    else:
        transformers_fixture(a.out or ROOT)


if __name__ == "__main__":
    main()

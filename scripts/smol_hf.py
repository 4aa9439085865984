#!/usr/bin/env python3
"""The Python side of `scripts/device-run.sh smol` (issue 27): continued pretraining of a SmolLM2-135M-shaped model.

No network: the model is random (a `LlamaForCausalLM` of SmolLM2-135M's config, saved with transformers) and its
tokenizer is trained here, so the folder is what `train --init FOLDER` and `prep --tokenizer FOLDER` read from a real
SmolLM2 checkout, at the same sizes.

  make FOLDER   a SmolLM2-style byte-level BPE tokenizer.json of exactly --vocab ids (Digits split one by one, then
                GPT-2's ByteLevel; `<|endoftext|>` id 0, the EOS every document ends with; trained on the texts of
                --parquet's files where pyarrow is importable, else --text; reserved special tokens fill the
                vocabulary up where the texts give fewer merges), tokenizer_config.json, and a random
                LlamaForCausalLM (config.json + model.safetensors) of the given shape (SmolLM2-135M's by default).
  val EXPORT    the val loss of an `export hf` folder, loaded with AutoModelForCausalLM, on the batches tokenmill's
                validation reads (per source: --val-steps micro-batches of B x T, in order from the start of its val
                shards; the mixture's loss is the sources' mean weighted by the mixture), printed beside the loss
                tokenmill logged for --step in RUN/metrics.jsonl. fp32 and bf16 (autocast, as the engine evaluates).

usage (the device's Python, /opt/torch/.venv/bin/python3):
  python scripts/smol_hf.py make OUT/smol-init --parquet .dist/parquet --text data/tinyshakespeare.txt
  python scripts/smol_hf.py val OUT/smol-export --run OUT/smol-run --step 30 --source OUT/a:0.7 --source OUT/b:0.3 \
      --batch 8 --seq-len 1024 --val-steps 4
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_val  # noqa: E402  scripts/hf_val.py: val windows and logged losses as tokenmill reads them

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def texts_for_training(parquet: str | None, text: str | None) -> list[str]:
    texts: list[str] = []
    if parquet:
        try:
            import pyarrow.parquet as pq

            for f in sorted(glob.glob(os.path.join(parquet, "*.parquet"))):
                texts.extend(t for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t)
            print(f"tokenizer: training on {len(texts)} documents of {parquet}")
        except ImportError:
            print(f"tokenizer: no pyarrow in this Python: not reading {parquet}")
    if not texts and text:
        with open(text, encoding="utf-8") as f:
            texts = f.read().split("\n\n")
        print(f"tokenizer: training on {len(texts)} paragraphs of {text}")
    if not texts:
        raise SystemExit("no training text: give --parquet (with pyarrow) or --text")
    return texts


def make_tokenizer(folder: str, vocab: int, texts: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # SmolLM2's own layout: each digit alone, then GPT-2's ByteLevel (with its regex); nothing added around the text.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    learned = tok.get_vocab_size()
    if learned < vocab:
        tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(vocab - learned)])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    assert tok.token_to_id("<|endoftext|>") == 0
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "model_max_length": 2048,
            },
            f,
            indent=2,
        )
        f.write("\n")
    print(f"tokenizer: {vocab} ids ({learned} learned, {vocab - learned} reserved specials)")


def make_model(folder: str, a: argparse.Namespace) -> None:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    # transformers 5 spells the rotary base inside rope_parameters; 4.x as rope_theta.
    if int(transformers.__version__.split(".")[0]) >= 5:
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta}}
    else:
        rope = {"rope_theta": a.rope_theta}
    cfg = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.embd,
        intermediate_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=a.block,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        **rope,
    )
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: LlamaForCausalLM L={a.layers} C={a.embd} NH={a.heads} KV={a.kv_heads} H={a.hidden} V={a.vocab}, {n:,} parameters")


def val(a: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = a.device if (a.device != "cuda" or torch.cuda.is_available()) else "cpu"
    tok = AutoTokenizer.from_pretrained(a.export)
    # fp32 whatever the version's default load dtype (transformers 5: the saved one; 4.x: fp32).
    model = AutoModelForCausalLM.from_pretrained(a.export).float().to(device).eval()
    print(f"export {a.export}: {type(model).__name__}, tokenizer {type(tok).__name__} of {len(tok)} ids, on {device}")
    B, T = a.batch, a.seq_len
    sources = []
    for s in a.source:
        path, _, w = s.rpartition(":")
        sources.append((path, float(w)))
    logged = {os.path.normpath(k): v for k, v in hf_val.logged_val_losses(a.run, a.step).items()}
    total_w = sum(w for _, w in sources)
    mixed = {"fp32": 0.0, "bf16": 0.0}
    for path, w in sources:
        losses = {"fp32": 0.0, "bf16": 0.0}
        with torch.no_grad():
            for x, y in hf_val.val_windows(path, B, T, a.val_steps):
                x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                for kind in losses:
                    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=kind == "bf16"):
                        logits = model(input_ids=x).logits
                    losses[kind] += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)).item()
        for kind in losses:
            losses[kind] /= a.val_steps
            mixed[kind] += w / total_w * losses[kind]
        ours = logged.get(os.path.normpath(path))
        print(
            f"val {path}: transformers fp32 {losses['fp32']:.6f}, bf16 {losses['bf16']:.6f}; "
            f"tokenmill (step {a.step}) {ours if ours is None else f'{ours:.6f}'}"
        )
    ours = logged.get("mixture")
    if ours is None:
        raise SystemExit(f"{a.run}/metrics.jsonl: no val loss at step {a.step}")
    print(
        f"val mixture: transformers fp32 {mixed['fp32']:.6f}, bf16 {mixed['bf16']:.6f}; tokenmill (step {a.step}) "
        f"{ours:.6f}; |fp32 - tokenmill| = {abs(mixed['fp32'] - ours):.2e}, |bf16 - tokenmill| = {abs(mixed['bf16'] - ours):.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="tokenizer + random LlamaForCausalLM folder")
    mk.add_argument("folder")
    mk.add_argument("--parquet", help="a folder of FineWeb-style parquet files (column `text`) to train the tokenizer on")
    mk.add_argument("--text", help="a text file to train it on when the parquet cannot be read")
    mk.add_argument("--vocab", type=int, default=49152)
    mk.add_argument("--layers", type=int, default=30)
    mk.add_argument("--embd", type=int, default=576)
    mk.add_argument("--heads", type=int, default=9)
    mk.add_argument("--kv-heads", type=int, default=3)
    mk.add_argument("--hidden", type=int, default=1536)
    mk.add_argument("--block", type=int, default=2048)
    mk.add_argument("--rope-theta", type=float, default=100000.0)
    mk.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("val", help="an export's val loss beside tokenmill's")
    v.add_argument("export")
    v.add_argument("--run", required=True, help="tokenmill's log dir (its metrics.jsonl)")
    v.add_argument("--step", type=int, required=True, help="the step whose val loss the export's weights had")
    v.add_argument("--source", action="append", required=True, help="DIR:WEIGHT, as train --data")
    v.add_argument("--batch", type=int, required=True)
    v.add_argument("--seq-len", type=int, required=True)
    v.add_argument("--val-steps", type=int, required=True)
    v.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.cmd == "make":
        os.makedirs(a.folder, exist_ok=True)
        make_tokenizer(a.folder, a.vocab, texts_for_training(a.parquet, a.text))
        make_model(a.folder, a)
    else:
        val(a)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Continue pretraining a Hugging Face model with tokenmill and hand it back to transformers, checked end to end.

The README's "Continue pretraining a Hugging Face model" recipe, run for real on a model transformers makes here (no
network), and its promise checked where only transformers can check it:

  1. transformers writes a random LlamaForCausalLM (GQA; tied and untied head) and a Qwen2ForCausalLM (q, k, v
     biases), each beside a byte-level BPE tokenizer.json (tests/fixtures/hf_tokenizers/bpe, 4,096 ids);
  2. `tokenmill prep corpus --tokenizer MODEL` writes two shard directories (the two halves of tiny Shakespeare);
  3. `tokenmill train --init MODEL --data a:0.7,b:0.3` trains N steps from the HF weights on the mixture;
  4. `tokenmill export hf` writes the last checkpoint as an HF folder;
  5. transformers loads that folder (AutoTokenizer + AutoModelForCausalLM) and computes the validation loss on the
     same tokens tokenmill's last validation read (each source's first val_steps windows of B x T + 1, its
     loader's order), and the mixture's as tokenmill weighs it. Each must equal tokenmill's logged val loss within
     --rtol (f32 on both sides: the two differ only by summation order).

It also checks that AutoTokenizer, loaded from the exported folder, gives the ids prep wrote for the first document.

Run with a Python that has torch and transformers (the GPU machine's /opt/torch/.venv, or any CPU install):
    python3 scripts/hf-continue-check.py --bin target/release/tokenmill [--steps 20] [--keep DIR]
Exit status 0 when every loss matches, 1 otherwise; the figures are printed.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import hf_val  # scripts/hf_val.py: the val windows and logged losses, read as tokenmill reads them

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests/fixtures/hf_tokenizers/bpe/tokenizer.json"
CORPUS = REPO / "data/tinyshakespeare.txt"
B, T, VAL_STEPS = 4, 64, 4


def run(cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed (rc {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


# The models checked: (name, config class, model class, tied head, tokenizer). Qwen2 is a Llama block with q, k, v
# biases; its tokenizer is Qwen2's kind (transformers 5 loads a qwen2 folder with Qwen2Tokenizer, which rebuilds the
# pre-tokenizer as Qwen2's whatever tokenizer.json says, so a GPT-2-style tokenizer.json would not be what it runs).
MODELS = [
    ("llama-tied", LlamaConfig, LlamaForCausalLM, True, "gpt2-style"),
    ("llama-untied", LlamaConfig, LlamaForCausalLM, False, "gpt2-style"),
    ("qwen2", Qwen2Config, Qwen2ForCausalLM, False, "qwen2-style"),
]
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def tokenizer_json(style: str) -> str:
    """The fixture's byte-level BPE, as is (GPT-2's kind) or with Qwen2's normalizer and pre-tokenizer."""
    t = json.loads(TOKENIZER.read_text())
    if style == "qwen2-style":
        t["normalizer"] = {"type": "NFC"}
        t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]}
    return json.dumps(t, ensure_ascii=False)


def write_model(folder: Path, config_class, model_class, tied: bool, style: str, seed: int):
    """A random model of GQA shape with the fixture tokenizer, as save_pretrained writes it."""
    vocab = len(json.loads(TOKENIZER.read_text())["model"]["vocab"])
    config = config_class(
        vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=T, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():  # transformers initialises biases to 0; random ones show they travel both ways
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer_json(style))


def write_corpus(root: Path):
    """Tiny Shakespeare's two halves as two corpora of 40 documents each (split at blank lines)."""
    text = CORPUS.read_text()
    paragraphs = text.split("\n\n")
    half = len(paragraphs) // 2
    for name, part in (("a", paragraphs[:half]), ("b", paragraphs[half:])):
        folder = root / name
        folder.mkdir(parents=True)
        step = (len(part) + 39) // 40
        for i in range(0, len(part), step):
            (folder / f"doc{i // step:03}.txt").write_text("\n\n".join(part[i:i + step]))
    return [root / "a", root / "b"]


def hf_val_loss(model, shard_dir: Path):
    losses = []
    with torch.no_grad():
        for x, y in hf_val.val_windows(shard_dir, B, T, VAL_STEPS):
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            logits = model(input_ids=x).logits.float()
            losses.append(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item())
    return sum(losses) / len(losses)


def check(bin_path: Path, work: Path, index: int, steps: int, rtol: float) -> bool:
    name, config_class, model_class, tied, style = MODELS[index]
    model_dir, log, export = work / f"hf-{name}", work / f"log-{name}", work / f"export-{name}"
    shards = work / "shards" / style
    write_model(model_dir, config_class, model_class, tied, style, 1234 + index)
    sources = []
    for corpus in sorted((work / "corpus").iterdir()):
        out = shards / corpus.name
        if not out.exists():
            run([bin_path, "prep", "corpus", "--input", corpus, "--tokenizer", model_dir, "--out", out,
                 "--shard-size", "20000", "--no-progress"])
        sources.append(out)
    weights = (0.7, 0.3)
    data = ",".join(f"{s}:{w}" for s, w in zip(sources, weights))
    run([bin_path, "train", "--quiet", "--config", REPO / "configs/tiny-cpu.toml", "--init", model_dir,
         "--data", data, "--log-dir", log, "--max-steps", steps,
         "--set", f"data.seq_len={T}", "--set", f"data.micro_batch={B}", "--set", f"data.total_batch_tokens={B * T}",
         "--set", "eval.sample_every=0", "--set", f"eval.val_every={steps}", "--set", f"eval.val_steps={VAL_STEPS}",
         "--set", f"checkpoint.every={steps}", "--set", "optim.warmup_steps=2", "--set", "optim.max_lr=1e-3"])
    each = hf_val.logged_val_losses(log, steps)
    if "mixture" not in each:
        sys.exit(f"{log / 'metrics.jsonl'}: no val loss at step {steps}")
    checkpoint = sorted((log / "checkpoints").glob("step_*"))[-1]
    run([bin_path, "export", "hf", checkpoint, export])

    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    ok = True
    hf_each = [hf_val_loss(model, s) for s in sources]
    hf_mixed = sum(w * l for w, l in zip(weights, hf_each)) / sum(weights)
    pairs = [(str(s), each.get(str(s)), l) for s, l in zip(sources, hf_each)] + [("mixture", each["mixture"], hf_mixed)]
    for what, tm, hf in pairs:
        if tm is None:
            print(f"{name} {what}: tokenmill logged no val loss for this source")
            ok = False
            continue
        rel = abs(tm - hf) / abs(hf)
        good = rel <= rtol
        ok &= good
        print(f"{name} {what}: tokenmill {tm:.6f}  transformers {hf:.6f}  rel {rel:.2e}  {'ok' if good else 'FAIL'}")

    # The exported tokenizer gives the ids prep wrote: the first document of source a, then the end-of-text id.
    first_doc = sorted((work / "corpus" / "a").iterdir())[0].read_text()
    want = tokenizer(first_doc)["input_ids"] + [tokenizer.eos_token_id]
    manifest = json.loads((sources[0] / "manifest.json").read_text())
    got = hf_val.read_shard(sources[0] / manifest["shards"][0]["file"])[: len(want)].tolist()
    same = got == want
    ok &= same
    print(f"{name} tokenizer: AutoTokenizer ({type(tokenizer).__name__}) on the export gives prep's {len(want)} ids "
          f"of the first document: "
          f"{'ok' if same else 'FAIL'}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, default=REPO / "target/release/tokenmill")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    a = p.parse_args()
    if a.keep:
        a.keep.mkdir(parents=True)
        work = a.keep
    else:
        work = Path(tempfile.mkdtemp(prefix="tm-hf-continue-"))
    write_corpus(work / "corpus")
    ok = all([check(a.bin.resolve(), work, i, a.steps, a.rtol) for i in range(len(MODELS))])
    if not a.keep:
        shutil.rmtree(work)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

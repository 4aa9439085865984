#!/usr/bin/env python3
"""Regenerate tests/fixtures/hf_tokenizers/: two small Hugging Face tokenizers trained on tiny Shakespeare, and the
token ids Python's `tokenizers` gives for the FineWeb sample and tiny Shakespeare, for tests/hf_tokenizer.rs.

No network: the tokenizers are trained here, on shared/data/tinyshakespeare_input.txt, with the `tokenizers` package
(Hugging Face's Python binding of the same Rust crate tokenmill links; the version is recorded).

  bpe/tokenizer.json   byte-level BPE as GPT-2 / SmolLM2 / Qwen2 build theirs: ByteLevel pre-tokenizer and decoder,
                       `<|endoftext|>` its only special token, a post-processor that adds nothing. No
                       tokenizer_config.json: the document boundary is `<|endoftext|>` appended (found by name).
  bpe_llama3/tokenizer.json
                       byte-level BPE as Llama-3 builds its: a Split with Llama-3's regex (cl100k_base's: numbers in
                       pieces of up to 3 digits, punctuation runs with their newlines) before a ByteLevel without its
                       own regex, `ignore_merges` on, special tokens `<|begin_of_text|>` `<|end_of_text|>` and some
                       reserved ones, a TemplateProcessing post-processor that prepends `<|begin_of_text|>`, and a
                       tokenizer_config.json naming both. The fast path's second pre-tokenizer (src/tokenizer/
                       llama3_split.rs) is held to Python on it.
  spm/tokenizer.json   SentencePiece-style BPE as Llama-2 / TinyLlama build theirs: Metaspace pre-tokenizer (`▁`,
                       prepended to the first word), byte fallback (`<0x00>`..`<0xFF>` after `<unk> <s> </s>`), a
                       TemplateProcessing post-processor that prepends `<s>`, and a tokenizer_config.json naming
                       `<s>` / `</s>`. Its alphabet is limited to 60 characters, so FineWeb's other characters take the
                       byte-fallback path.
  reference.json       per tokenizer and input: every document's token count (boundary tokens included) and the
                       sha256 of all ids as uint32 little-endian, document after document; plus a few short strings
                       with their ids in full, so a mismatch can be read.

A document's ids are what a model's own tokenizer gives it for pretraining: `encode(text, add_special_tokens=True)`
with special-token strings inside the text treated as text (`encode_special_tokens = True`), no truncation, no
padding; and when the post-processor adds no token, the EOS id appended. The Rust side derives the same rule from the
tokenizer files by itself (src/tokenizer/hf.rs); this script applies it the plain way, document by document.

Usage (from the repo root; `pip install tokenizers pyarrow` in a venv, e.g. /work/venvs/tok):
    python scripts/make_hf_tokenizers.py [--data ../shared/data] [--out tests/fixtures/hf_tokenizers]
    python scripts/make_hf_tokenizers.py --gpt2-json OUT.json   # only GPT-2's own tokenizer.json (50,257 ids), from
        # the encoder.json / vocab.bpe tiktoken-rs vendors (in ~/.cargo/registry), for scripts/prep-tokenizers.sh to
        # time the fast path on a real vocabulary against the tiktoken path with the very same ids
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import struct

import pyarrow.parquet as pq
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FINEWEB_DIR = "fineweb_legal_pilot"
FINEWEB_FILES = [f"batch_{i:06d}.parquet" for i in range(1, 29)]
SHAKESPEARE = "tinyshakespeare_input.txt"
# Small enough that each tokenizer.json stays well under 1 MB, large enough to merge real words.
VOCAB = 4096
CASES = {
    "ascii": "Hello, world! The quick brown fox jumps over the lazy dog.",
    "special strings as text": "a <|endoftext|> b <s> c </s> d <unk> e <0x41>",
    "whitespace": "  two leading\n\n\tand a tab   three trailing   ",
    "unicode": "naïve café — 日本語 — Ελληνικά — 🤖🎉",
    "empty": "",
}


def train_bpe(text_path: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([text_path], trainer)
    return tok


# Llama-3's pre-tokenizer regex, as its tokenizer.json spells it.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]


def train_bpe_llama3(text_path: str) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=LLAMA3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([text_path], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    return tok


def train_spm(text_path: str) -> Tokenizer:
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 256, special_tokens=specials, limit_alphabet=60, show_progress=False
    )
    tok.train([text_path], trainer)
    # Llama's layout: the specials, then the 256 byte tokens, then the learned pieces; byte fallback on.
    spec = json.loads(tok.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in learned:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


def document_ids(tok: Tokenizer, eos: int | None, texts: list[str]) -> list[list[int]]:
    """Every document as the model's tokenizer gives it, the boundary included (see the module docstring)."""
    with_specials = tok.encode_batch(texts, add_special_tokens=True)
    plain = tok.encode_batch(texts, add_special_tokens=False)
    docs = []
    for a, b in zip(with_specials, plain):
        ids = list(a.ids)
        if ids == list(b.ids):
            assert eos is not None, "a tokenizer that adds no BOS needs an EOS"
            ids.append(eos)
        docs.append(ids)
    return docs


def digest(docs: list[list[int]]) -> dict:
    h = hashlib.sha256()
    for ids in docs:
        h.update(struct.pack(f"<{len(ids)}I", *ids))
    return {"documents": len(docs), "tokens": sum(map(len, docs)), "counts": [len(d) for d in docs], "sha256": h.hexdigest()}


def fineweb_texts(data: str) -> list[tuple[str, list[str]]]:
    out = []
    for name in FINEWEB_FILES:
        table = pq.read_table(os.path.join(data, FINEWEB_DIR, name), columns=["text"])
        out.append((f"{FINEWEB_DIR}/{name}", [str(t) for t in table.column("text").to_pylist()]))
    return out


def write_gpt2_json(out: str) -> None:
    """GPT-2's tokenizer as Hugging Face's `gpt2` repo holds it, from OpenAI's encoder.json and vocab.bpe."""
    found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets/vocab.bpe")))
    if not found:
        raise SystemExit("no tiktoken-rs assets in ~/.cargo/registry: run `cargo fetch` first")
    assets = os.path.dirname(found[-1])
    tok = Tokenizer(models.BPE.from_file(os.path.join(assets, "encoder.json"), os.path.join(assets, "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.token_to_id("<|endoftext|>") == 50256 and tok.get_vocab_size() == 50257
    tok.save(out)
    print(f"{out}: GPT-2, {tok.get_vocab_size()} ids, from {assets}")


def main() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(repo, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "hf_tokenizers"))
    ap.add_argument("--gpt2-json", help="write only GPT-2's own tokenizer.json to this path")
    args = ap.parse_args()
    if args.gpt2_json:
        write_gpt2_json(args.gpt2_json)
        return
    shakespeare_path = os.path.join(args.data, SHAKESPEARE)
    with open(shakespeare_path, encoding="utf-8") as f:
        shakespeare = f.read()
    fineweb = fineweb_texts(args.data)

    built = {
        "bpe": (train_bpe(shakespeare_path), None),
        "bpe_llama3": (train_bpe_llama3(shakespeare_path), {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"}),
        "spm": (train_spm(shakespeare_path), {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}),
    }
    reference = {"tokenizers_version": tokenizers.__version__, "tokenizers": {}}
    for name, (tok, config) in built.items():
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        tok.save(os.path.join(folder, "tokenizer.json"))
        if config is not None:
            with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
                settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": config["bos"], "eos_token": config["eos"]}
                if "unk" in config:
                    settings["unk_token"] = config["unk"]
                settings.update({"add_bos_token": True, "add_eos_token": False})
                json.dump(settings, f, indent=2)
                f.write("\n")
        # Reload from the file, as tokenmill does, and encode the way a pretraining pipeline must.
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        tok.encode_special_tokens = True
        eos = tok.token_to_id(config["eos"] if config else "<|endoftext|>")
        with open(os.path.join(folder, "tokenizer.json"), "rb") as f:
            file_sha = hashlib.sha256(f.read()).hexdigest()
        entry = {
            "tokenizer_json_sha256": file_sha,
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "eos": eos,
            "cases": {k: document_ids(tok, eos, [v])[0] for k, v in CASES.items()},
            "fineweb": {file: digest(document_ids(tok, eos, texts)) for file, texts in fineweb},
            # The 28 files' documents in file order: the stream `prep` writes from the folder.
            "fineweb_all": {k: v for k, v in digest([d for _, texts in fineweb for d in document_ids(tok, eos, texts)]).items() if k != "counts"},
            "tinyshakespeare": digest(document_ids(tok, eos, [shakespeare])),
        }
        reference["tokenizers"][name] = entry
        total = sum(d["tokens"] for d in entry["fineweb"].values())
        print(f"{name}: vocab {entry['vocab_size']}, FineWeb {total} tokens, tiny Shakespeare {entry['tinyshakespeare']['tokens']}")
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()

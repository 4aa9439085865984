#!/usr/bin/env python3
"""Regenerate tests/fixtures/golden/: GPT-2 token ids as Python's tiktoken produces them, for tests/golden_tokens.rs.

The encoding is tiktoken's own r50k_base constructor run on the ranks file tiktoken-rs bundles, with tiktoken's pinned
sha256 checked (reference/gpt2_encoding.py), and cross-checked against the ranks tiktoken's `gpt2` builds from
GPT-2's original vocab.bpe + encoder.json. So the fixture is tiktoken's gpt2, not tiktoken-rs checked against itself.

What it writes (small enough to commit, ~0.2 MB):
  index.json        sources, sha256 of every text, offsets into ids.u16le.bin, and whole-corpus digests
  ids.u16le.bin     the golden ids of every case, uint16 little-endian, concatenated

Cases: the first documents of a few FineWeb parquet files, the first 20,000 characters of tiny Shakespeare, and tricky
strings (unicode, whitespace runs, contractions, "<|endoftext|>" as plain text). Texts from shared/data are referenced
(file + row + sha256), not copied. The whole corpus (all 2,800 FineWeb documents, all of tiny Shakespeare) is
recorded as token counts + sha256 of the uint16 LE stream in fineweb.py's layout (EOT before each document), per
file and in total, so the Rust test proves equality on every document without committing megabytes of ids.

Usage (from the repo root, with `pip install tiktoken numpy pyarrow` in a venv):
    python scripts/make_golden.py [--data ../shared/data] [--out tests/fixtures/golden]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "reference"))
from gpt2_encoding import EOT, check_against_data_gym_gpt2, gpt2_encoding, provenance  # noqa: E402

FINEWEB_DIR = "fineweb_legal_pilot"
FINEWEB_FILES = [f"batch_{i:06d}.parquet" for i in range(1, 29)]
# A spread of files; the first rows of each (documents are 1-48 KB).
GOLDEN_FINEWEB = {"batch_000001.parquet": 8, "batch_000010.parquet": 4, "batch_000019.parquet": 4, "batch_000028.parquet": 4}
SHAKESPEARE = "tinyshakespeare_input.txt"
SHAKESPEARE_CHARS = 20_000

TRICKY = {
    "empty": "",
    "ascii sentence": "Hello, world! The quick brown fox jumps over the lazy dog.",
    "contractions": "I'm sure you'll see they've done it, we'd said she's right and it's theirs. DON'T I'LL WE'VE Y'all o'clock",
    "apostrophes other": "rock 'n' roll, ’curly’ quotes, ‘single’, \"double\", ``latex''",
    "leading spaces": "    four spaces then text",
    "trailing spaces": "text then four spaces    ",
    "whitespace runs": "a  b   c    d\n\n\ne\t\tf \t \n g\r\n\r\nh" + " " * 300 + "i" + "\n" * 40 + "j",
    "only whitespace": " \n \t\n\n   \r\n",
    "newline before word": "line one\n line two\n\nline three\n\n\n  indented",
    "unicode latin": "naïve café résumé Zürich Øresund Łódź ß ﬁ ligature",
    "unicode combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0353a\u0352\u0316l\u0315\u034eg\u0350o",
    "unicode cjk": "日本語のテキストと中文文本，한국어 텍스트。",
    "unicode greek cyrillic arabic": "Ελληνικά κείμενα — Русский текст — مرحبا بالعالم — עברית",
    "unicode astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 🤖🎉 👩\u200d👩\u200d👧\u200d👦 🇺🇳 🏳️\u200d🌈",
    "unicode spaces": "non\u00a0breaking\u2003em\u2009thin\u3000ideographic\u200bzero-width\ufeffbom",
    "numbers": "1234567890 3.14159 -2.5e-10 1,000,000 0x1F 2024-05-20 12:34:56 100%",
    "endoftext as text": "<|endoftext|>",
    "endoftext inside": "before<|endoftext|>after <|endoftext|> spaced <|endoftext",
    "other special-looking": "<|fim_prefix|><|im_start|>user<|im_end|>",
    "code": "def f(x):\n    return x ** 2  # square\n\nfor i in range(10):\n\tprint(f'{i}: {f(i)}')\n",
    "url and email": "https://example.com/path/to?q=1&b=two#frag mailto:someone@example.org",
    "punctuation runs": "!!!??? ... --- *** ((( ))) [[[ ]]] {{{ }}} ;;; ::: ~~~ ```",
    "repeated letters": "a" * 1000,
    "long word": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
    "mixed case": "HTTPServer getHTTPResponseCode iPhone eBay McDonald's",
}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_texts(path: str) -> list[str]:
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{path}: row {i} has no text")
    return texts


def to_u16(ids: list[int]) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise ValueError("token id outside uint16")
    return arr.astype("<u2")


def stream_digest(enc, documents, also=None) -> dict:
    """fineweb.py's layout: EOT, then the document's ids; uint16 little-endian; count + sha256 of the bytes.
    The same bytes are fed to `also` (the whole-corpus hash), if given."""
    h = hashlib.sha256()
    tokens = 0
    docs = 0
    for text in documents:
        data = to_u16([EOT] + enc.encode_ordinary(text)).tobytes()
        h.update(data)
        if also is not None:
            also.update(data)
        tokens += len(data) // 2
        docs += 1
    return {"documents": docs, "tokens": tokens, "sha256": h.hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"), help="shared/data directory")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "golden"))
    args = ap.parse_args()

    check_against_data_gym_gpt2()
    enc = gpt2_encoding()
    cases: list[dict] = []
    blob = bytearray()

    def add(name: str, source: dict, text: str) -> None:
        ids = to_u16(enc.encode_ordinary(text))
        cases.append({
            "name": name,
            "source": source,
            "text_sha256": sha256_text(text),
            "offset": len(blob) // 2,
            "count": int(ids.size),
        })
        blob.extend(ids.tobytes())

    for file, rows in GOLDEN_FINEWEB.items():
        texts = read_texts(os.path.join(args.data, FINEWEB_DIR, file))
        for row in range(rows):
            add(f"fineweb {file} row {row}", {"kind": "parquet", "file": f"{FINEWEB_DIR}/{file}", "row": row}, texts[row])

    with open(os.path.join(args.data, SHAKESPEARE), encoding="utf-8", newline="") as f:
        shakespeare = f.read()
    add(f"tiny shakespeare first {SHAKESPEARE_CHARS} chars",
        {"kind": "text_prefix", "file": SHAKESPEARE, "chars": SHAKESPEARE_CHARS},
        shakespeare[:SHAKESPEARE_CHARS])

    for name, text in TRICKY.items():
        add(name, {"kind": "inline", "text": text}, text)

    per_file = []
    h_all = hashlib.sha256()
    total_tokens = 0
    total_docs = 0
    for file in FINEWEB_FILES:
        texts = read_texts(os.path.join(args.data, FINEWEB_DIR, file))
        # The whole-corpus stream is the per-file streams in file order.
        d = stream_digest(enc, texts, also=h_all)
        per_file.append({"file": f"{FINEWEB_DIR}/{file}", **d})
        total_tokens += d["tokens"]
        total_docs += d["documents"]

    index = {
        "about": "GPT-2 token ids from Python tiktoken; regenerate with scripts/make_golden.py; checked by tests/golden_tokens.rs",
        "tokenizer": "gpt2",
        "encode": "encode_ordinary (special-token text is plain text)",
        "encoding": provenance(),
        "ids_file": "ids.u16le.bin",
        "ids_dtype": "uint16 little-endian",
        "data_root": "shared/data",
        "cases": cases,
        "corpus": {
            "layout": f"per document: EOT ({EOT}) then its ids; uint16 little-endian; documents in file order, rows in order",
            "fineweb": {"files": per_file, "documents": total_docs, "tokens": total_tokens, "sha256": h_all.hexdigest()},
            "tinyshakespeare": {"file": SHAKESPEARE, **stream_digest(enc, [shakespeare])},
        },
    }

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ids.u16le.bin"), "wb") as f:
        f.write(bytes(blob))
    with open(os.path.join(args.out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(cases)} cases, {len(blob) // 2} golden ids; corpus: {total_docs} FineWeb documents = {total_tokens} tokens, "
          f"tiny Shakespeare = {index['corpus']['tinyshakespeare']['tokens']} tokens -> {args.out}")


if __name__ == "__main__":
    main()

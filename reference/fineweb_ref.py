#!/usr/bin/env python3
"""The Python reference for `tokenmill prep fineweb`: build-nanogpt's fineweb.py, run on local parquet files.

Built the way fineweb.py is (karpathy/build-nanogpt): tiktoken's gpt2 encoding, `multiprocessing.Pool(nprocs)`,
`pool.imap(tokenize, docs, chunksize=16)`, every document as `[EOT] + encode_ordinary(text)` in a numpy uint16 array,
shards of `--shard-size` tokens filled in order, the first shard `val`, the rest `train`. Two deliberate differences:
  - shards are written with llm.c's `write_datafile` layout (dev/data/data_common.py: 256 int32 header = magic
    20240520, version 1, token count; then uint16 tokens) as `{name}_{split}_{index:06d}.bin`, the layout and names
    tokenmill writes, so the outputs are byte-comparable (`cmp` / sha256) with ours;
  - a document longer than a whole shard is split over as many shards as it needs (fineweb.py's single carry-over
    would fail on it); for every other input the shards are exactly fineweb.py's.
Input is local parquet files (their `text` column), read in order with pyarrow; no datasets library, no download.
The encoding is built offline exactly as scripts/make_golden.py builds it (gpt2_encoding.py).

It prints tokens, seconds, tokens/s and peak RSS (getrusage: this process, and the largest worker via
RUSAGE_CHILDREN), then the same as one JSON line for scripts.

    python reference/fineweb_ref.py --input ../shared/data/fineweb_legal_pilot --out /tmp/ref \\
        --shard-size 1000000 --procs 2
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_encoding import EOT, gpt2_encoding  # noqa: E402

MAGIC_GPT2 = 20240520
VERSION_GPT2 = 1
HEADER_INTS = 256

# One per process, as fineweb.py's module-level `enc`: built in the parent before the pool forks (workers inherit
# it), or by the initializer under a spawn start method.
enc = None


def init_worker() -> None:
    global enc
    if enc is None:
        enc = gpt2_encoding()


def tokenize(text: str) -> np.ndarray:
    # fineweb.py's tokenize(doc), given the text instead of the row dict.
    tokens = [EOT]  # the special <|endoftext|> token delimits all documents
    tokens.extend(enc.encode_ordinary(text))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def write_datafile(filename: str, toks: np.ndarray) -> None:
    """llm.c's write_datafile for gpt-2: 1024-byte header (magic, version, count as int32 LE), then uint16 LE."""
    assert len(toks) < 2**31, "token count too large"
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC_GPT2
    header[1] = VERSION_GPT2
    header[2] = len(toks)
    with open(filename, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(toks, dtype="<u2").tobytes())


def parquet_inputs(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.parquet")))
            if not found:
                sys.exit(f"error: {p}: no *.parquet files in this directory")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        else:
            sys.exit(f"error: {p}: no such file or directory")
    return files


def documents(files: list[str], counter: list[int]):
    """The `text` column of each file, in file order and row order."""
    for path in files:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            sys.exit(f"error: {path}: no `text` column (columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
            for text in batch.column(0).to_pylist():
                if text is None:
                    sys.exit(f"error: {path}: row {counter[0]} has a null text")
                counter[0] += 1
                yield text


def parse_count(s: str) -> int:
    v = float(s)  # accepts 1e8 like fineweb.py's int(1e8)
    if v < 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"{s}: expected a positive whole number")
    return int(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="parquet files and/or directories of *.parquet")
    ap.add_argument("--out", required=True, help="output directory for the .bin shards")
    ap.add_argument("--shard-size", type=parse_count, default=int(1e8), help="tokens per shard (fineweb.py: 1e8)")
    ap.add_argument("--procs", type=int, default=max(1, os.cpu_count() // 2), help="worker processes (fineweb.py: cpus/2)")
    ap.add_argument("--name", default="edufineweb", help="shard name prefix")
    ap.add_argument("--val-shards", type=int, default=1, help="leading shards that are val (fineweb.py: 1)")
    args = ap.parse_args()

    files = parquet_inputs(args.input)
    os.makedirs(args.out, exist_ok=True)
    global enc
    enc = gpt2_encoding()

    shard_size = args.shard_size
    shards: list[dict] = []
    doc_counter = [0]
    total_tokens = 0

    def flush(toks: np.ndarray) -> None:
        index = len(shards)
        split = "val" if index < args.val_shards else "train"
        filename = os.path.join(args.out, f"{args.name}_{split}_{index:06d}.bin")
        write_datafile(filename, toks)
        shards.append({"file": os.path.basename(filename), "split": split, "tokens": int(len(toks))})

    t0 = time.perf_counter()
    pool = mp.Pool(args.procs, initializer=init_worker)
    try:
        # preallocate buffer to hold current shard
        all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
        token_count = 0
        for tokens in pool.imap(tokenize, documents(files, doc_counter), chunksize=16):
            total_tokens += len(tokens)
            pos = 0
            # fineweb.py: `if token_count + len(tokens) < shard_size` append, else fill the shard and carry the rest.
            while token_count + (len(tokens) - pos) >= shard_size:
                remainder = shard_size - token_count
                all_tokens_np[token_count:] = tokens[pos : pos + remainder]
                flush(all_tokens_np)
                pos += remainder
                token_count = 0
            n = len(tokens) - pos
            all_tokens_np[token_count : token_count + n] = tokens[pos:]
            token_count += n
        if token_count != 0:
            flush(all_tokens_np[:token_count])
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    seconds = time.perf_counter() - t0

    # ru_maxrss is KiB on Linux. RUSAGE_CHILDREN reports the largest reaped child, not a sum.
    main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "tool": "fineweb_ref.py",
        "procs": args.procs,
        "files": len(files),
        "documents": doc_counter[0],
        "tokens": total_tokens,
        "shards": len(shards),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(total_tokens / seconds) if seconds > 0 else None,
        "peak_rss_main_mib": round(main_mib, 1),
        "peak_rss_worker_mib": round(worker_mib, 1),
        "peak_rss_total_bound_mib": round(main_mib + args.procs * worker_mib, 1),
    }
    print(f"tokens     {total_tokens:,} in {doc_counter[0]:,} documents from {len(files)} files -> {len(shards)} shards in {args.out}")
    print(f"seconds    {seconds:.2f}")
    print(f"tokens/s   {total_tokens / seconds:,.0f} ({args.procs} procs)")
    print(f"peak RSS   main {main_mib:.1f} MiB, largest worker {worker_mib:.1f} MiB "
          f"(at most {result['peak_rss_total_bound_mib']:.1f} MiB together)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

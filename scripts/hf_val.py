"""What the HF round-trip checks (hf-continue-check.py, smol_hf.py) need of a tokenmill run, read as tokenmill reads it:
the val windows its loader gives, and the val losses its run logged.

A shard is 256 little-endian int32 of header (docs/SHARD_FORMAT.md: magic 20240520 for u16 tokens, 20240801 for
u32), then the tokens. tokenmill's val loader reads window i (B x T + 1 tokens) at i x B x T inside a shard, from the
first val shard of the manifest's list; the windows used here must lie in that shard (checked).
"""

import json
import struct
from pathlib import Path

import numpy as np

HEADER_INTS = 256
U16_MAGIC = 20240520


def read_shard(path: Path) -> np.ndarray:
    """A shard's tokens as int64."""
    raw = Path(path).read_bytes()
    magic = struct.unpack("<i", raw[:4])[0]
    dtype = np.uint16 if magic == U16_MAGIC else np.uint32
    return np.frombuffer(raw[4 * HEADER_INTS:], dtype=dtype).astype(np.int64)


def val_windows(shard_dir: Path, batch: int, seq_len: int, steps: int):
    """The val loader's first `steps` batches of a shard directory as (x, y) int64 arrays of shape (batch, seq_len)."""
    shard_dir = Path(shard_dir)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    first = next(s for s in manifest["shards"] if s["split"] == "val")
    tokens = read_shard(shard_dir / first["file"])
    n = batch * seq_len
    if len(tokens) < steps * n + 1:
        raise SystemExit(f"{shard_dir / first['file']}: {len(tokens)} tokens, fewer than the {steps * n + 1} that "
                         f"{steps} val batches of {batch} x {seq_len} read")
    for i in range(steps):
        w = tokens[i * n: (i + 1) * n + 1]
        yield w[:-1].reshape(batch, seq_len), w[1:].reshape(batch, seq_len)


def logged_val_losses(run_dir: Path, step: int) -> dict:
    """The val losses a run logged at `step` (metrics.jsonl): "mixture" (the run's val loss: the mixture's, or the one
    source's) and, for a mixture, each source's under its directory as logged."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("step") != step:
            continue
        if e["kind"] == "val":
            out["mixture"] = e["loss"]
        elif e["kind"] == "val_source":
            out[e["source"]] = e["loss"]
    return out

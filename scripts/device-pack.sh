#!/usr/bin/env bash
# Pack what scripts/device-run.sh needs into .dist/ (git-ignored, carried to the GPU machine): the stripped, xz-packed
# CUDA binary (scripts/build-cuda.sh makes it), tiktoken's r50k ranks for the Python reference (the device has no
# network), the FineWeb parquet sample, tiktoken's wheels for the Python prep reference, and GPT-2's own
# tokenizer.json (for the prep-hf step: the byte-level BPE fast path against the tiktoken path on one vocabulary;
# written with the Python `tokenizers` package: TOK_PYTHON names a Python that has it, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dist/parquet
[ -f .dist/tokenmill.xz ] || [ -f .dist/tokenmill.gz ] || { echo "no .dist/tokenmill.xz: run scripts/build-cuda.sh first" >&2; exit 1; }
cp "$(ls -d "$HOME"/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken | tail -n 1)" .dist/
cp ../shared/data/fineweb_legal_pilot/*.parquet .dist/parquet/
# tiktoken for the Python prep reference (the device has no network; its Python is 3.12).
mkdir -p .dist/wheels
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dist/wheels tiktoken
"${TOK_PYTHON:-python3}" scripts/make_hf_tokenizers.py --gpt2-json .dist/gpt2_tokenizer.json
rm -f .dist/tokenmill   # only the packed binary travels
du -sh .dist

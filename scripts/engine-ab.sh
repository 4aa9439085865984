#!/usr/bin/env bash
# A/B timings of the decoder engine's switches on the GPU machine (docs/PERF.md, "engine choices"): the 124M
# train_step at B=64, T=1024, 524,288 tokens per step, once per variant, in one process each:
#   default                          GELU in the cuBLASLt epilogues, classifier chunks of 16,384 rows
#   TOKENMILL_GELU_FUSION=0          GELU as its own kernels (activation.cu)
#   TOKENMILL_CLASSIFIER_CHUNK=N     the lm_head + classifier over N rows at once
#   TOKENMILL_BGRADB=1               bias gradients from the dW matmuls' BGRADB epilogue
# Run from the repo root with .dist/tokenmill.gz carried; prints one line per variant.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.dist/tokenmill"
[ -x "$BIN" ] || { gunzip -kf .dist/tokenmill.gz && chmod +x "$BIN"; }
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH="$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
OUT="${OUT:-/tmp/tm-out}"; mkdir -p "$OUT"
variant() {  # NAME ENV...
  local name="$1"; shift
  env "$@" "$BIN" bench --model small --batch 64 --seq-len 1024 --dtype bf16 --device cuda --total-batch 524288 \
    --warmup "${AB_WARMUP:-1}" --steps "${AB_STEPS:-4}" --what train_step --engine cuda --peak-size 2048 \
    > "$OUT/ab_$name.txt" 2>&1
  echo "$name: $(grep -E '^gpt2-124m' "$OUT/ab_$name.txt" | awk '{print $9 " ms/step, " $15 " tok/s, peak " $18 " " $19}')"
}
variant default
variant gelu_unfused TOKENMILL_GELU_FUSION=0
variant chunk32k TOKENMILL_CLASSIFIER_CHUNK=32768
variant chunk64k TOKENMILL_CLASSIFIER_CHUNK=65536
variant bgradb TOKENMILL_BGRADB=1

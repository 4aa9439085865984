#!/usr/bin/env bash
# Time `tokenmill prep fineweb` with the built-in tiktoken path (gpt2) and with a Hugging Face tokenizer.json on the
# same parquet files, same machine, one run: for each thread count, REPEATS runs of each, interleaved (gpt2, hf,
# gpt2, hf, ...) so drift in the machine hits both alike. Prints each one's best time and tokens/s, and the throughput
# ratio hf / gpt2 on the same input (the ratio of the times; issue 27 asks for >= 0.5 on 16 cores), and which encoder
# ran the hf tokenizer (prep's log line: the byte-level BPE fast path, or the `tokenizers` crate and why).
#
# usage: scripts/prep-tokenizers.sh [INPUT_DIR] [THREADS...]
# env:   BIN (tokenmill binary, default target/release/tokenmill), TOKENIZER (a tokenizer.json or its folder, default
#        tests/fixtures/hf_tokenizers/bpe; a real model's, e.g. a SmolLM2 or Llama folder, measures its vocabulary
#        size), REPEATS (3), SHARD_SIZE (1000000), CORES (e.g. "0-15": pin with taskset), CRATE=1 (also time the
#        same tokenizer through the `tokenizers` crate, TOKENMILL_HF_ENCODER=crate: the fast path's speed-up)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT="${1:-../shared/data/fineweb_legal_pilot}"; shift || true
THREADS=("${@:-16}"); THREADS=(${THREADS[@]})
BIN="${BIN:-target/release/tokenmill}"
TOKENIZER="${TOKENIZER:-tests/fixtures/hf_tokenizers/bpe}"
REPEATS="${REPEATS:-3}"
SHARD_SIZE="${SHARD_SIZE:-1000000}"
PIN=(); [ -n "${CORES:-}" ] && PIN=(taskset -c "$CORES")
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
echo "input: $INPUT ($(ls "$INPUT" | wc -l) files), hf tokenizer: $TOKENIZER, repeats $REPEATS, $(nproc) cpus visible"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
KINDS=(gpt2 hf); [ "${CRATE:-0}" = 1 ] && KINDS+=(hf-crate)
# One prep; prints its tokens and seconds, from its report line "DIR: N document(s), T tokens in S.SSs (...)".
prep_once() {
  local kind="$1" threads="$2" tok="$TOKENIZER" encoder=""
  [ "$kind" = gpt2 ] && tok=gpt2
  [ "$kind" = hf-crate ] && encoder=crate
  rm -rf "$WORK/out"
  TOKENMILL_HF_ENCODER="$encoder" "${PIN[@]}" "$BIN" prep fineweb --no-progress --input "$INPUT" --out "$WORK/out" \
    --shard-size "$SHARD_SIZE" --threads "$threads" --tokenizer "$tok" > "$WORK/report" 2> "$WORK/stderr"
  [ "$kind" = gpt2 ] || grep -o 'encoded by .*' "$WORK/stderr" | head -1 > "$WORK/encoder.$kind"
  sed -nE 's/.* ([0-9]+) tokens in ([0-9.]+)s.*/\1 \2/p' "$WORK/report" | head -1
}
printf "%-8s %-8s %12s %12s %14s\n" threads tok tokens "best s" "best tok/s"
for t in "${THREADS[@]}"; do
  for k in "${KINDS[@]}"; do : > "$WORK/$k"; done
  for _ in $(seq "$REPEATS"); do
    for k in "${KINDS[@]}"; do prep_once "$k" "$t" >> "$WORK/$k"; done
  done
  for k in "${KINDS[@]}"; do
    sort -g -k2 "$WORK/$k" | head -1 | awk -v t="$t" -v k="$k" '{printf "%-8s %-8s %12d %12.2f %14.0f\n", t, k, $1, $2, $1 / $2}'
  done
  # Same input for both: the throughput ratio is the ratio of the times (token counts differ with the vocabulary).
  awk -v h="$(sort -g -k2 "$WORK/hf" | head -1 | cut -d' ' -f2)" -v g="$(sort -g -k2 "$WORK/gpt2" | head -1 | cut -d' ' -f2)" \
    -v t="$t" 'BEGIN {printf "%-8s hf throughput / gpt2 throughput (same input, best times): %.2f\n", t, g / h}'
done
for k in "${KINDS[@]:1}"; do echo "$k: $(cat "$WORK/encoder.$k")"; done

#!/usr/bin/env bash
# Side-by-side benchmark of `tokenmill prep fineweb` and the Python reference (reference/fineweb_ref.py, built
# the way build-nanogpt's fineweb.py is) on the same parquet files, same machine, one run. For each worker count it
# runs both tools REPEATS times, checks that their shards are byte-identical, and prints tokens/s (best and median)
# and peak RSS (tokenmill: the process; Python: main process + largest worker, as fineweb_ref.py reports).
#
# usage: scripts/prep-compare.sh [INPUT_DIR] [WORKERS...]
# env:   BIN (tokenmill binary, default target/release/tokenmill), PYTHON (with tiktoken, numpy, pyarrow),
#        REPEATS (3), SHARD_SIZE (1000000), CORES (e.g. "0,1": pin everything to these CPUs with taskset),
#        REPLICATE (N: also build a larger input of N copies of every file, as symlinks, for the peak-RSS run)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT="${1:-../shared/data/fineweb_legal_pilot}"; shift || true
WORKERS=("${@:-1 2}"); WORKERS=(${WORKERS[@]})
BIN="${BIN:-target/release/tokenmill}"
PYTHON="${PYTHON:-python3}"
REPEATS="${REPEATS:-3}"
SHARD_SIZE="${SHARD_SIZE:-1000000}"
PIN=(); [ -n "${CORES:-}" ] && PIN=(taskset -c "$CORES")
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

if [ -n "${REPLICATE:-}" ]; then
  mkdir -p "$WORK/big"
  for r in $(seq -w 1 "$REPLICATE"); do
    for f in "$INPUT"/*.parquet; do ln -s "$(readlink -f "$f")" "$WORK/big/r${r}_$(basename "$f")"; done
  done
  INPUT="$WORK/big"
fi
echo "input: $INPUT ($(ls "$INPUT" | wc -l) files), shard size $SHARD_SIZE, repeats $REPEATS, pinned: ${CORES:-no}, $(nproc) cpus visible"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf "%-10s %7s %12s %12s %12s %10s\n" tool workers tokens "best tok/s" "median tok/s" "peak MiB" > "$WORK/table"
for w in "${WORKERS[@]}"; do
  : > "$WORK/rust_rates"; : > "$WORK/py_rates"
  for i in $(seq "$REPEATS"); do
    rm -rf "$WORK/rs" "$WORK/py"
    /usr/bin/time -f "%M" -o "$WORK/rs_rss" "${PIN[@]}" "$BIN" prep fineweb --no-progress --input "$INPUT" \
      --out "$WORK/rs" --shard-size "$SHARD_SIZE" --threads "$w" > "$WORK/rs_out"
    rate=$(grep -oE '[0-9.]+M tokens/s' "$WORK/rs_out" | grep -oE '^[0-9.]+')
    tokens=$(grep -oE '[0-9]+ tokens in' "$WORK/rs_out" | grep -oE '^[0-9]+')
    echo "$rate" >> "$WORK/rust_rates"
    "${PIN[@]}" "$PYTHON" reference/fineweb_ref.py --input "$INPUT" --out "$WORK/py" \
      --shard-size "$SHARD_SIZE" --procs "$w" > "$WORK/py_out"
    tail -n 1 "$WORK/py_out" > "$WORK/py_json"
    "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["tokens_per_s"]/1e6)' "$WORK/py_json" >> "$WORK/py_rates"
    py_rss=$("$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(round(d["peak_rss_total_bound_mib"]))' "$WORK/py_json")
    # Same bytes, file by file.
    for f in "$WORK"/py/*.bin; do cmp -s "$f" "$WORK/rs/$(basename "$f")" || { echo "MISMATCH: $(basename "$f")"; exit 1; }; done
    [ "$(ls "$WORK"/py/*.bin | wc -l)" = "$(ls "$WORK"/rs/*.bin | wc -l)" ] || { echo "MISMATCH: shard count"; exit 1; }
  done
  rs_mib=$(( $(cat "$WORK/rs_rss") / 1024 ))
  printf "%-10s %7s %12s %12s %12s %10s\n" tokenmill "$w" "$tokens" "$(sort -g "$WORK/rust_rates" | tail -1)M" "$(median < "$WORK/rust_rates")M" "$rs_mib" >> "$WORK/table"
  printf "%-10s %7s %12s %12s %12s %10s\n" python-ref "$w" "$tokens" "$(sort -g "$WORK/py_rates" | tail -1 | cut -c1-5)M" "$(median < "$WORK/py_rates" | cut -c1-5)M" "$py_rss" >> "$WORK/table"
done
echo "shards byte-identical between the two tools in every run"
cat "$WORK/table"

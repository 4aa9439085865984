#!/usr/bin/env bash
# Why 2 prep workers give ~1.3x of 1 on a 2-core machine: time one `prep fineweb --threads 1` alone, then two of
# them at once on the same input (independent processes, no shared state). If each of the pair needs much more
# CPU per token than the lone run, the cores slow each other down and no pipeline can scale linearly there.
# Optionally (PROFILE=1) records a perf profile of the lone run and prints its top symbols.
#
# usage: scripts/prep-contention.sh [INPUT_DIR]   env: BIN (default target/debug/tokenmill), REPLICATE (4)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT="${1:-../shared/data/fineweb_legal_pilot}"
BIN="${BIN:-target/debug/tokenmill}"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/in"
for r in $(seq "${REPLICATE:-4}"); do
  for f in "$INPUT"/*.parquet; do ln -s "$(readlink -f "$f")" "$WORK/in/r${r}_$(basename "$f")"; done
done
run() {  # $1: output dir, $2: label
  /usr/bin/time -f "$2: %e s wall, %U s user CPU" "$BIN" prep fineweb --no-progress --input "$WORK/in" --out "$1" \
    --shard-size 10000000 --threads 1 > /dev/null
}
run "$WORK/alone" "alone"
run "$WORK/a" "pair A" & run "$WORK/b" "pair B"; wait
if [ "${PROFILE:-0}" = 1 ]; then
  perf record -q -g -o "$WORK/perf.data" "$BIN" prep fineweb --no-progress --input "$WORK/in" --out "$WORK/p" \
    --shard-size 10000000 --threads 1 > /dev/null 2>&1
  perf report -i "$WORK/perf.data" --no-children --sort symbol 2>/dev/null | grep "%" | grep -v "^#" | head -15
fi

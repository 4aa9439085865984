#!/usr/bin/env bash
# How `prep` scales with threads on one box, and whether its output is the same for every thread count.
#
#   scripts/prep-scaling.sh [BIN]
#
# BIN: a tokenmill binary (default: $TOKENMILL_BIN, else target/release/tokenmill, else .dist/tokenmill, else
# .dist/tokenmill.gz unpacked into the work directory). Needs no Rust and no network: only the binary and the parquet
# files (PARQUET_DIR, default .dist/parquet, else ../shared/data/fineweb_legal_pilot).
#
# The input is the parquet files linked REPLICATE times (default 8: the 28 shared files -> 224 files, ~35M GPT-2
# tokens). For each N in THREADS (default 1 2 4 8 16, those above the core count dropped) it runs
# `prep fineweb --input DIR --threads N` REPEATS times (default 3), and prints the best and median tokens/s, the
# speed-up over 1 thread and the ratio to 0.8 x N x rate(1) (>= 1 meets issue 13's target). Then WORKERS processes
# (default 4; 0 skips) run as `--worker I/WORKERS` at once with cores/WORKERS threads each, and `prep merge` joins
# them, and one prep of a single file times what every run pays whatever its size. Every output's shards must be
# byte-identical to the 1-thread run's (exit 1 otherwise).
#
# REPLICATE may be a list ("8 32"): the table is then printed for each input size (the 1-thread rate of each is its
# own reference; outputs are compared within one size), which separates what a run pays once (start-up, pipeline fill
# and drain, threads' cold caches) from the steady state: a speed-up that grows with the input is warm-up, one that
# does not is a serial stage or a per-thread slowdown.
#
# PROFILE=1: every run with TOKENMILL_PREP_PROFILE=1 (src/pipelines/profile.rs), and for each input size and thread
# count the profile of its best run is printed after the table: timeline, workers' busy share, fill and drain, worker
# time per token by stage (tokenize, encode, decode/other; on-CPU and run-queue wait from schedstat), how pieces were
# answered, the consumer's planning/waiting/pushing, process user/sys time and faults, one line per pool thread. The CPU
# topology (lscpu) is printed first: hyperthreads share a core's execution units.
#
# Env: SHARD_SIZE (default 10000000 tokens), NVIDIA_LIBS (see below), WORK (scratch directory, default a new one under ${TMPDIR:-/tmp},
# removed at the end unless KEEP=1). About 1 minute on 16 cores, 2-3 minutes on 2 (REPLICATE=8); REPLICATE="8 32"
# PROFILE=1 about 2.5 minutes on 16 cores (the 140M-token runs take ~4x as long). PROFILE=1 prints ~30k characters:
# send it to a file.
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICATE=${REPLICATE:-8}
THREADS=${THREADS:-"1 2 4 8 16"}
REPEATS=${REPEATS:-3}
WORKERS=${WORKERS:-4}
SHARD_SIZE=${SHARD_SIZE:-10000000}
CORES=$(nproc)

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/prep-scaling.XXXXXX")}
mkdir -p "$WORK"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

BIN=${1:-${TOKENMILL_BIN:-}}
if [ -z "$BIN" ]; then
  for b in target/release/tokenmill .dist/tokenmill; do [ -x "$b" ] && { BIN=$b; break; }; done
fi
if [ -z "$BIN" ] && [ -f .dist/tokenmill.gz ]; then
  BIN=$WORK/tokenmill
  gzip -dc .dist/tokenmill.gz > "$BIN"
  chmod +x "$BIN"
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no tokenmill binary (pass one, or set TOKENMILL_BIN)" >&2; exit 2; }
# A CUDA build loads the CUDA/cuDNN libraries at start-up; on the GPU machine they come from PyTorch's wheels, as in
# scripts/device-run.sh (NVIDIA_LIBS: the wheels' nvidia/ folder).
NVIDIA_LIBS=${NVIDIA_LIBS:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia}
if [ -d "$NVIDIA_LIBS" ]; then
  LD_LIBRARY_PATH="$(ls -d "$NVIDIA_LIBS"/*/lib 2> /dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
fi
"$BIN" --version > /dev/null || { echo "$BIN does not start (see above)" >&2; exit 2; }

PARQUET_DIR=${PARQUET_DIR:-}
if [ -z "$PARQUET_DIR" ]; then
  for d in .dist/parquet ../shared/data/fineweb_legal_pilot; do [ -d "$d" ] && { PARQUET_DIR=$d; break; }; done
fi
[ -n "$PARQUET_DIR" ] || { echo "no parquet files (set PARQUET_DIR)" >&2; exit 2; }
PARQUET_DIR=$(cd "$PARQUET_DIR" && pwd)

PROFILE=${PROFILE:-0}
[ "$PROFILE" = 1 ] && export TOKENMILL_PREP_PROFILE=1

# The input of $1 replicas: the parquet files linked that many times into $IN.
make_input() {
  IN=$WORK/input$1
  rm -rf "$IN"
  mkdir -p "$IN"
  n_files=0
  for r in $(seq 1 "$1"); do
    for f in "$PARQUET_DIR"/*.parquet; do
      ln -sf "$f" "$IN/r$(printf %03d "$r")_$(basename "$f")"
      n_files=$((n_files + 1))
    done
  done
}

if [ "$WORKERS" -gt 0 ] && ! "$BIN" prep merge --help > /dev/null 2>&1; then
  echo "note: $BIN has no \`prep merge\` (built before issue 13): the workers + merge check is skipped"
  WORKERS=0
fi
echo "prep scaling: $BIN ($("$BIN" --version)), $CORES cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
if [ "$PROFILE" = 1 ] && command -v lscpu > /dev/null; then
  lscpu | grep -E '^(CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\)|CPU max MHz|L3 cache)' \
    | sed 's/^/  /'
fi

# One prep run into $1 with the remaining arguments; prints "TOKENS SECONDS" from prep's own report (the whole
# prep: planning, tokenizing, writing and fsyncing every shard, the manifest).
run_prep() {
  local out=$1; shift
  rm -rf "$out"
  "$BIN" prep fineweb --no-progress --input "$IN" --out "$out" --shard-size "$SHARD_SIZE" "$@" > "$out.log" 2>&1 \
    || { echo "prep failed:" >&2; cat "$out.log" >&2; exit 1; }
  sed -n 's/^.*: [0-9]* document(s), \([0-9]*\) tokens in \([0-9.]*\)s.*$/\1 \2/p' "$out.log" | head -n 1
}

# Shards of $2 byte-identical to those of $1 (same files, same bytes, same manifest shard list).
same_shards() {
  local a=$1 b=$2 f
  [ "$(cd "$a" && ls ./*.bin)" = "$(cd "$b" && ls ./*.bin)" ] || return 1
  for f in "$a"/*.bin; do cmp -s "$f" "$b/$(basename "$f")" || return 1; done
  [ "$(grep -A4 '"file"' "$a/manifest.json")" = "$(grep -A4 '"file"' "$b/manifest.json")" ]
}

status=0
PROFILES=$WORK/profiles
mkdir -p "$PROFILES"
for replicate in $REPLICATE; do
  make_input "$replicate"
  REF=$WORK/ref$replicate
  rate1=""
  echo
  echo "input: $n_files parquet files ($replicate x $PARQUET_DIR), shard size $SHARD_SIZE, $REPEATS run(s) per thread count"
  printf '%-8s %14s %14s %9s %16s %8s  %s\n' threads "best tok/s" "median tok/s" speedup "0.8*N*rate(1)" ratio output
  for n in $THREADS; do
    if [ "$n" -gt "$CORES" ]; then
      echo "($n threads: skipped, this machine has $CORES cores)"
      continue
    fi
    rates=()
    best_rate=0
    for rep in $(seq 1 "$REPEATS"); do
      read -r tokens secs < <(run_prep "$WORK/out" --threads "$n")
      rate=$(awk -v t="$tokens" -v s="$secs" 'BEGIN { printf "%.0f", t / s }')
      rates+=("$rate")
      if [ "$rate" -gt "$best_rate" ]; then
        best_rate=$rate
        grep '^prep profile:' "$WORK/out.log" > "$PROFILES/r${replicate}_t$n" || true
      fi
      if [ ! -d "$REF" ]; then
        mv "$WORK/out" "$REF"
        echo "(each run: $tokens tokens)"
        verdict=reference
      elif same_shards "$REF" "$WORK/out"; then
        verdict=identical
      else
        verdict="DIFFERENT from the 1st run"
        status=1
      fi
    done
    sorted=$(printf '%s\n' "${rates[@]}" | sort -n)
    best=$(echo "$sorted" | tail -n 1)
    median=$(echo "$sorted" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    [ -n "$rate1" ] || rate1=$(awk -v b="$best" -v n="$n" 'BEGIN { print b / n }')
    awk -v n="$n" -v b="$best" -v m="$median" -v r1="$rate1" -v v="$verdict" 'BEGIN {
      t = 0.8 * n * r1
      printf "%-8d %13.2fM %13.2fM %8.2fx %15.2fM %8.2f  %s\n", n, b / 1e6, m / 1e6, b / r1, t / 1e6, b / t, v }'
  done
  if [ "$PROFILE" = 1 ]; then
    for n in $THREADS; do
      [ -s "$PROFILES/r${replicate}_t$n" ] || continue
      echo
      echo "profile of the best run, $replicate replicas, $n thread(s):"
      cat "$PROFILES/r${replicate}_t$n"
    done
  fi
done
# The fixed-cost run and the workers below use the first REPLICATE's input and reference.
first=${REPLICATE%% *}
make_input "$first"
REF=$WORK/ref$first

# What every run pays before and after tokenizing (encoder build, listing and fingerprinting inputs, the last shard's
# fsync): prep of one file with every core, best of 3. On many cores it is a visible part of a sub-second run.
mkdir -p "$WORK/one"
ln -sf "$(ls "$PARQUET_DIR"/*.parquet | head -n 1)" "$WORK/one/"
best=""
for rep in 1 2 3; do
  rm -rf "$WORK/one_out"
  "$BIN" prep fineweb --no-progress --input "$WORK/one" --out "$WORK/one_out" --threads "$CORES" > "$WORK/one.log" 2>&1
  secs=$(sed -n 's/^.* tokens in \([0-9.]*\)s.*$/\1/p' "$WORK/one.log" | head -n 1)
  best=$(awk -v a="$best" -v b="$secs" 'BEGIN { print (a == "" || b < a) ? b : a }')
done
echo "fixed cost of a run (1 file, $CORES threads, best of 3): ${best}s"

if [ "$WORKERS" -gt 0 ]; then
  per=$(( CORES / WORKERS > 0 ? CORES / WORKERS : 1 ))
  W=$WORK/workers
  rm -rf "$W"
  start=$(date +%s.%N)
  pids=()
  for i in $(seq 0 $((WORKERS - 1))); do
    "$BIN" prep fineweb --no-progress --input "$IN" --out "$W" --shard-size "$SHARD_SIZE" --threads "$per" \
      --worker "$i/$WORKERS" > "$WORK/worker$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "a worker failed:" >&2; cat "$WORK"/worker*.log >&2; exit 1; }; done
  mid=$(date +%s.%N)
  "$BIN" prep merge --no-progress "$W" > "$WORK/merge.log" 2>&1 || { cat "$WORK/merge.log" >&2; exit 1; }
  end=$(date +%s.%N)
  tokens=$(awk '/^[ ]*total: / { next } / tokens  xxh3 / { s += $3 } END { print s }' "$WORK/merge.log")
  if same_shards "$REF" "$W"; then verdict=identical; else verdict="DIFFERENT from the 1-thread run"; status=1; fi
  awk -v w="$WORKERS" -v p="$per" -v t="$tokens" -v a="$start" -v b="$mid" -v c="$end" -v v="$verdict" 'BEGIN {
    printf "\n%d workers x %d threads (processes at once): %.2fM tok/s wall incl. process start; merge %.2fs; %s\n",
      w, p, t / (b - a) / 1e6, c - b, v }'
fi
[ "$status" = 0 ] && echo "all outputs byte-identical" || echo "OUTPUTS DIFFER" >&2
exit "$status"

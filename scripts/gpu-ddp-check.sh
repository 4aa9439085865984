#!/usr/bin/env bash
# Data-parallel smoke test on the GPU machine: `tokenmill launch --nproc-per-node N -- train` on a tiny GPT-2 over
# tiny Shakespeare, on cuda with the NCCL backend, end to end (rendezvous, NCCL init, bucketed gradient all-reduce,
# reduced val loss, rank-0 log and checkpoint, clean shutdown). With N=1 (the default) it also runs plain `train`
# without the launcher and a run stopped half way and resumed through the launcher, and requires both to repeat the
# whole run's losses exactly: averaging over one rank must change nothing, and training (CUDA included) is
# deterministic.
#
#   BIN=.dist/tokenmill scripts/gpu-ddp-check.sh [N]     # from the repo root; N GPUs (default 1)
#   DEVICE=cpu BIN=target/debug/tokenmill scripts/gpu-ddp-check.sh 2    # the same on CPU ranks (tcp backend)
#   DDP_ENGINE=cuda BIN=.dist/tokenmill scripts/gpu-ddp-check.sh        # on the decoder engine
#
# Prints the NCCL init lines (NCCL_DEBUG=INFO, INIT subsystem), every log line, and a summary last. Exit status
# non-zero if the NCCL path did not run, a rank failed, or the run did not train.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/tokenmill}"
N="${1:-1}"
STEPS="${STEPS:-30}"
DEVICE="${DEVICE:-cuda}"
BACKEND=$([ "$DEVICE" = cpu ] && echo tcp || echo nccl)
WORK="${OUT:-/tmp/tm-out}/ddp"
rm -rf "$WORK"; mkdir -p "$WORK"
export NCCL_DEBUG="${NCCL_DEBUG:-INFO}" NCCL_DEBUG_SUBSYS="${NCCL_DEBUG_SUBSYS:-INIT}"
# Leave NVLink multicast off (see the device notes).
export NCCL_NVLS_ENABLE=0

"$BIN" prep fineweb --no-progress --input data/tinyshakespeare.txt --out "$WORK/shards" \
  --shard-size 100000 --val-shards 1 > "$WORK/prep.log"

# configs/tiny-cpu.toml on cuda: micro-batch 4 x 64 per rank, 2 micro-steps per optimizer step on every rank.
COMMON=(--config configs/tiny-cpu.toml --data "$WORK/shards" --device "$DEVICE" --max-steps "$STEPS"
        --set "data.total_batch_tokens=$((512 * N))" --set eval.val_every=10 --set eval.val_steps=4
        --set eval.sample_every=0 --set checkpoint.every=0)
# DDP_ENGINE=cuda runs the same checks on the decoder engine (bf16, and one head of 64: the tiny config's two
# heads of 32 are below the engine's attention head size); unset, `auto` picks for the tiny fp32 config.
if [ -n "${DDP_ENGINE:-}" ]; then
  COMMON+=(--set "run.engine=\"$DDP_ENGINE\"")
  [ "$DDP_ENGINE" = cuda ] && COMMON+=(--dtype bf16 --set model.n_head=1)
fi

PORT=$((29500 + RANDOM % 1000))
set +e
"$BIN" launch --nproc-per-node "$N" --master-port "$PORT" --timeout 120 -- \
  train "${COMMON[@]}" --log-dir "$WORK/ddp" 2>&1 | tee "$WORK/launch.log"
RC=${PIPESTATUS[0]}
set -e
echo "launch exit status: $RC"
grep -E "NCCL INFO (NCCL version|comm .* rank|Init COMPLETE|Connected)" "$WORK/launch.log" | head -n 20 || true

fail() { echo "FAIL: $*"; exit 1; }
[ "$RC" = 0 ] || fail "tokenmill launch exited with $RC"
grep -q "backend $BACKEND" "$WORK/launch.log" || fail "no rank reported the $BACKEND backend"
[ "$(grep -c ' train ' "$WORK/ddp/log.txt")" = "$STEPS" ] || fail "log.txt does not hold $STEPS train lines"
[ -f "$WORK/ddp/checkpoints/step_$(printf %06d "$STEPS")/model.safetensors" ] || fail "no final checkpoint"
FIRST=$(awk '$2 == "train" { print $3; exit }' "$WORK/ddp/log.txt")
LAST=$(awk '$2 == "train" { v = $3 } END { print v }' "$WORK/ddp/log.txt")
awk -v a="$FIRST" -v b="$LAST" 'BEGIN { exit !(b < a) }' || fail "loss did not fall: $FIRST -> $LAST"

# max |a - b| over the train losses two log.txt files share, joined by step.
loss_diff() {
  awk '$2 == "train" { if (FNR == NR) a[$1] = $3; else if ($1 in a) { d = a[$1] - $3; if (d < 0) d = -d; if (d > m) m = d; n++ } }
       END { printf "%g over %d steps", m, n }' "$1" "$2"
}

COMPARE=""
if [ "$N" = 1 ]; then
  # Averaging over one rank must change nothing, and the GPU kernels are deterministic (no atomics; the embedding
  # backward sums in a fixed order), so the losses must agree bit for bit (EXACT=0 reports without failing).
  "$BIN" train "${COMMON[@]}" --log-dir "$WORK/plain" > "$WORK/plain.log" 2>&1 || fail "plain train failed"
  PLAIN=$(loss_diff "$WORK/ddp/log.txt" "$WORK/plain/log.txt")
  # Exact resume through the launcher: stop half way (checkpoint), resume to the end, compare with the whole run.
  HALF=$((STEPS / 2))
  "$BIN" launch --nproc-per-node 1 --master-port $((PORT + 1)) --timeout 120 -- train "${COMMON[@]}" \
    --log-dir "$WORK/resume" --stop-after "$HALF" > "$WORK/resume1.log" 2>&1 || fail "first half (--stop-after $HALF) failed"
  "$BIN" launch --nproc-per-node 1 --master-port $((PORT + 2)) --timeout 120 -- train "${COMMON[@]}" \
    --log-dir "$WORK/resume" --resume > "$WORK/resume2.log" 2>&1 || fail "resume failed"
  RESUMED=$(loss_diff "$WORK/ddp/log.txt" "$WORK/resume/log.txt")
  COMPARE="max |loss diff| vs plain train: $PLAIN; stopped at $HALF and resumed vs whole run: $RESUMED"
  if [ "${EXACT:-1}" = 1 ]; then
    [[ "$PLAIN" == "0 over $STEPS steps" ]] || fail "one-rank job and plain train differ: $PLAIN"
    [[ "$RESUMED" == "0 over $STEPS steps" ]] || fail "resumed run differs from the whole run: $RESUMED"
  fi
fi

echo "===== ddp summary"
grep -m1 "data parallel:" "$WORK/launch.log" | sed -E "s/^\[rank [0-9]+\] //"
echo "ddp: $N rank(s), $STEPS steps, train loss $FIRST -> $LAST, val: $(grep ' val ' "$WORK/ddp/log.txt" | tail -n 1)"
echo "ddp: OK${COMPARE:+; $COMPARE}"

#!/usr/bin/env bash
# GPU-machine script: everything tokenmill measures on the device, in one call.
# Run from the repo root on the device with .dist/ carried (see scripts/device-pack.sh):
#   scripts/device-run.sh STEP...      STEP in: env prep train bench pool compare ddp kernels correct engine
#                                      engine-train cudnn profile ab bitwise gemm llama llama-1b hellaswag
#                                      compare-sizes wgmma ncu smol prep-hf
# TOKENMILL_ATTENTION=cudnn|native|native-sm90 overrides the config's [engine] attention in every step (auto: cuDNN in a
# --features cudnn build). ENGINE=autograd|cuda|auto (default auto: the cuda engine for these bf16 runs) picks the
# training engine of train, bench, compare and profile. MODEL=llama-124m runs bench/compare/profile on that preset.
# BIN and PY override the binary (.dist/tokenmill) and the Python (the device's torch venv), e.g. for smol's CPU dry
# run (its comment below). Writes logs under $OUT (or /tmp/tm-out) and prints a short summary of each step last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/tm-out}"; mkdir -p "$OUT"
BIN="${BIN:-$PWD/.dist/tokenmill}"
unpack() {  # $1 without the .xz / .gz that travelled (xz: about half gzip's size for these binaries)
  [ -x "$1" ] && return
  if [ -f "$1.xz" ]; then xz -dkf "$1.xz"; else gunzip -kf "$1.gz"; fi
  chmod +x "$1"
}
unpack "$BIN"
PY="${PY:-/opt/torch/.venv/bin/python3}"
NV=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH="$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
export TOKENMILL_R50K_RANKS="$PWD/.dist/r50k_base.tiktoken"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

data() {  # FineWeb shards for GPU runs: 1M-token shards (val 1M, train 3.36M tokens)
  [ -f "$OUT/fw/manifest.json" ] || "$BIN" prep fineweb --no-progress --input .dist/parquet --out "$OUT/fw" --shard-size 1000000 > "$OUT/prep_fw.log" 2>&1
}

for step in "$@"; do
  case "$step" in
  env)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
    ldd "$BIN" | grep -E "not found|cuda|cublas|nccl|curand" | tee "$OUT/ldd.txt"
    note "env: $(tail -n 1 "$OUT/gpu.txt"); $(grep -c 'not found' "$OUT/ldd.txt") missing libs"
    ;;
  prep)  # tokenmill vs the Python reference, pinned to 2 cores (the dev machine's size), 4x the corpus
    # The reference needs tiktoken (carried as wheels in .dist/wheels by scripts/device-pack.sh) and pyarrow (too
    # large to carry; used only if the machine's Python has it).
    PYV="$OUT/pyref"; [ -x "$PYV/bin/python" ] || "$PY" -m venv --system-site-packages "$PYV" > /dev/null
    "$PYV/bin/pip" install -q --no-index --find-links .dist/wheels tiktoken > "$OUT/pip.log" 2>&1
    if ! "$PYV/bin/python" -c "import tiktoken, pyarrow, numpy" 2> "$OUT/pyref_missing.txt"; then
      note "prep compare: skipped, the reference's Python lacks a module: $(tail -n 1 "$OUT/pyref_missing.txt")"
      continue
    fi
    CORES=0,1 BIN="$BIN" PYTHON="$PYV/bin/python" REPEATS=3 SHARD_SIZE=10000000 REPLICATE=4 \
      scripts/prep-compare.sh .dist/parquet 1 2 > "$OUT/prep_compare.log" 2>&1
    note "prep compare (2 pinned cores):"; tail -n 6 "$OUT/prep_compare.log" | tee -a "$SUMMARY"
    CORES=0-15 BIN="$BIN" PYTHON="$PYV/bin/python" REPEATS=1 SHARD_SIZE=10000000 REPLICATE=4 \
      scripts/prep-compare.sh .dist/parquet 4 8 16 > "$OUT/prep_compare_16.log" 2>&1
    note "prep scaling (16 cores):"; tail -n 6 "$OUT/prep_compare_16.log" | tee -a "$SUMMARY"
    ;;
  prep-hf)  # issue 27: prep with GPT-2's own tokenizer.json through the byte-level BPE fast path (and the tokenizers
            # crate) against the tiktoken path, same vocabulary and ids, 4/8/16 pinned cores, interleaved runs
            # (.dist/gpt2_tokenizer.json: scripts/device-pack.sh writes it)
    # shellcheck disable=SC2086
    CORES="${PREP_HF_CORES:-0-15}" BIN="$BIN" TOKENIZER=.dist/gpt2_tokenizer.json CRATE=1 \
      REPEATS="${PREP_HF_REPEATS:-3}" SHARD_SIZE=10000000 scripts/prep-tokenizers.sh .dist/parquet \
      ${PREP_HF_THREADS:-4 8 16} > "$OUT/prep_hf.log" 2>&1
    note "prep-hf rc=$? (fast path and crate against the tiktoken path, cores ${PREP_HF_CORES:-0-15}):"; tail -n 12 "$OUT/prep_hf.log" | tee -a "$SUMMARY"
    ;;
  train)  # 124M, bf16, total batch 524288, largest micro-batch that fits
    data
    for B in ${TRAIN_B:-64 32 16}; do
      rm -rf "$OUT/log124m"
      timeout 300 "$BIN" train --config configs/gpt2-124m.toml --data "$OUT/fw" --device cuda --dtype bf16 \
        --max-steps "${TRAIN_STEPS:-12}" --log-dir "$OUT/log124m" --set data.micro_batch=$B \
        --set eval.val_every=0 --set eval.sample_every=0 --set eval.hellaswag_every=0 --set checkpoint.every=0 \
        --set "run.engine=\"${ENGINE:-auto}\"" > "$OUT/train_B$B.log" 2>&1
      rc=$?
      note "train 124M B=$B rc=$rc: $(grep -E '^step' "$OUT/train_B$B.log" | tail -n 1)"
      # Median step time after step 0 (which includes the warm-up), from the `dt: ...ms` field.
      grep -E '^step' "$OUT/train_B$B.log" | sed -E 's/.*dt: *([0-9.]+)ms.*/\1/' | tail -n +2 | sort -n |
        awk -v b="$B" '{ a[NR] = $1 } END { if (NR) { m = a[int((NR + 1) / 2)];
          note = sprintf("train 124M B=%s: median step %.1f ms over steps 1-%d (min %.1f, max %.1f) = %.0f tok/s", b, m, NR, a[1], a[NR], 524288 * 1000 / m);
          print note } }' | tee -a "$SUMMARY"
      [ $rc = 0 ] && break
      tail -n 5 "$OUT/train_B$B.log" | tee -a "$SUMMARY"
    done
    ;;
  pool)  # the CUDA pool A/B (docs/PERF.md): the same bench with the pool releasing at every sync, then retaining
    for mode in release retain; do
      TOKENMILL_CUDA_POOL=$mode "$BIN" bench --model small --batch "${BENCH_B:-64}" --seq-len 1024 --dtype bf16 \
        --device cuda --total-batch 524288 --warmup "${BENCH_WARMUP:-1}" --steps "${BENCH_STEPS:-3}" \
        --json "$OUT/bench_pool_$mode.json" > "$OUT/bench_pool_$mode.txt" 2>&1
      note "bench 124M, TOKENMILL_CUDA_POOL=$mode:"; grep -E '^gpt2' "$OUT/bench_pool_$mode.txt" | tee -a "$SUMMARY"
    done
    ;;
  bench)
    "$BIN" bench --model small --batch "${BENCH_B:-64}" --seq-len 1024 --dtype bf16 --device cuda \
      --total-batch 524288 --warmup "${BENCH_WARMUP:-2}" --steps "${BENCH_STEPS:-5}" --json "$OUT/bench_124m.json" \
      --engine "${ENGINE:-auto}" --what "${BENCH_WHAT:-all}" > "$OUT/bench_124m.txt" 2>&1
    note "bench 124M:"; tail -n 12 "$OUT/bench_124m.txt" | tee -a "$SUMMARY"
    ;;
  compare)
    tab="$OUT/gemm_gpt2-124m_B${BENCH_B:-64}.toml"; [ -f "$tab" ] || tab=""
    TOKENMILL_GEMM_TABLE="$tab" "$BIN" bench compare --model small --batch "${BENCH_B:-64}" --seq-len 1024 --total-batch 524288 \
      --warmup "${BENCH_WARMUP:-2}" --steps "${BENCH_STEPS:-5}" --device cuda --python "$PY" \
      --engine "${ENGINE:-auto}" --json "$OUT/compare_124m.json" > "$OUT/compare_124m.txt" 2>&1
    note "compare 124M rc=$? ${tab:+(gemm table $tab)}:"; tail -n 8 "$OUT/compare_124m.txt" | tee -a "$SUMMARY"
    ;;
  compare-sizes)  # bench compare of GPT-2 sizes against the PyTorch recipe, per COMPARE_SPECS entry PRESET:B:TOTAL_TOKENS
                  # (a table tuned in this call's gemm step for that preset and B is used if present; else the default)
    for spec in ${COMPARE_SPECS:-gpt2-350m:32:524288 gpt2-1558m:8:131072}; do
      IFS=: read -r m b tot <<< "$spec"
      tab="$OUT/gemm_${m}_B$b.toml"; [ -f "$tab" ] || tab=""
      TOKENMILL_GEMM_TABLE="$tab" "$BIN" bench compare --model "$m" --batch "$b" --seq-len 1024 --total-batch "$tot" \
        --warmup "${BENCH_WARMUP:-2}" --steps "${BENCH_STEPS:-5}" --device cuda --python "$PY" \
        --engine "${ENGINE:-auto}" --json "$OUT/compare_$m.json" > "$OUT/compare_$m.txt" 2>&1
      note "compare $m B=$b rc=$? ${tab:+(gemm table $tab)}:"; tail -n 6 "$OUT/compare_$m.txt" | tee -a "$SUMMARY"
    done
    ;;
  ddp)
    [ -x scripts/gpu-ddp-check.sh ] && BIN="$BIN" scripts/gpu-ddp-check.sh > "$OUT/ddp.log" 2>&1
    note "ddp WORLD_SIZE=1 rc=$?: $(tail -n 3 "$OUT/ddp.log" | tr '\n' ' ')"
    ;;
  kernels)  # fused kernels, NCCL path and model gradients on CUDA vs their CPU twins (one test binary), + timings
    MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-30}" scripts/gpu-kernel-check.sh run > "$OUT/kernels.log" 2>&1
    note "kernels rc=$?:"; sed -n '/===== summary/,$p' "$OUT/kernels.log" | tee -a "$SUMMARY"
    ;;
  wgmma)  # Hopper's wgmma: the check GEMMs and the sm90 backward kernels against flash_attn's (kernels_wgmma), then
           # bench attention's native rows with the "sm90 bwd" variants beside the mma.sync kernels
    # timeout: a kernel fault leaves the test process hanging on exit (seen once, 2026-12-07: 8 minutes of a call).
    KERNEL_MODULES=kernels_wgmma MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-60}" timeout "${WGMMA_TIMEOUT:-240}" \
      scripts/gpu-kernel-check.sh run > "$OUT/wgmma.log" 2>&1
    note "wgmma checks rc=$?:"; sed -n '/===== summary/,$p' "$OUT/wgmma.log" | tee -a "$SUMMARY"
    grep -E "FAIL|sm90|SKIPPED" "$OUT/wgmma.log" | tee -a "$SUMMARY"
    timeout 120 "$BIN" bench attention --backend native --reps "${ATTN_REPS:-20}" > "$OUT/wgmma_bench.log" 2>&1
    note "bench attention (native + sm90 backward) rc=$?:"; grep -E "B  |sm90|^ *64  1024|not an sm_90" "$OUT/wgmma_bench.log" | tee -a "$SUMMARY"
    ;;
  ncu)  # Nsight Compute on the attention backward kernels (mma.sync and wgmma, every variant) at bench attention's
        # first shape (B=64 T=1024 NH=12): throughput, occupancy, warp stalls, memory; text report $OUT/ncu_attn.txt
    timeout "${NCU_TIMEOUT:-300}" ncu --kernel-name "regex:${NCU_KERNELS:-flash_(dq|dkdv)_}" --launch-count "${NCU_COUNT:-28}" \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      "$BIN" bench attention --backend native --reps 1 --warmup 0 > "$OUT/ncu_attn.txt" 2>&1
    note "ncu attention backward rc=$?: $(grep -cE '^  flash_' "$OUT/ncu_attn.txt") kernels profiled ($OUT/ncu_attn.txt)"
    grep -E '^  flash_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per' \
      "$OUT/ncu_attn.txt" | tee -a "$SUMMARY"
    ;;
  correct)  # loss tracking: tiny config CPU fp32 vs CUDA fp32/bf16, and 124M tokenmill vs PyTorch, 50 steps
    OUT="$OUT/correct" BIN="$BIN" PY="$PY" scripts/gpu-correctness.sh ${CORRECT_MODES:-tiny 124m} > "$OUT/correct.log" 2>&1
    note "correctness rc=$?:"; tail -n 14 "$OUT/correct.log" | tee -a "$SUMMARY"
    ;;
  engine)  # the decoder (cuda) engine against the autograd engine on this GPU (tests/gpu_engine.rs), memcheck too
    KERNEL_MODULES=gpu_engine MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-120}" scripts/gpu-kernel-check.sh run > "$OUT/engine.log" 2>&1
    note "engine checks rc=$?:"; sed -n '/===== summary/,$p' "$OUT/engine.log" | tee -a "$SUMMARY"
    grep -E "cuda engine|worst|after resume" "$OUT/engine.log" | sort -u | tee -a "$SUMMARY"
    ;;
  engine-train)  # the engine through `tokenmill train`: val loss, samples, checkpoints; stop + resume = uninterrupted
    data
    et=(--config configs/gpt2-124m.toml --data "$OUT/fw" --device cuda --dtype bf16 --max-steps 8
      --set data.micro_batch=8 --set data.total_batch_tokens=16384 --set optim.warmup_steps=2
      --set eval.val_every=4 --set eval.val_steps=2 --set eval.sample_every=4 --set eval.sample_count=1
      --set eval.hellaswag_every=0 --set checkpoint.every=4 --set "run.engine=\"cuda\"")
    rm -rf "$OUT/et_full" "$OUT/et_part"
    "$BIN" train "${et[@]}" --log-dir "$OUT/et_full" > "$OUT/et_full.log" 2>&1; rc1=$?
    "$BIN" train "${et[@]}" --log-dir "$OUT/et_part" --stop-after 4 > "$OUT/et_part1.log" 2>&1; rc2=$?
    "$BIN" train "${et[@]}" --log-dir "$OUT/et_part" --resume > "$OUT/et_part2.log" 2>&1; rc3=$?
    note "engine-train rc=$rc1/$rc2/$rc3: $(grep -cE '^[0-9]+ train' "$OUT/et_full/log.txt" 2>/dev/null) train lines, val: $(grep -E '^[0-9]+ val' "$OUT/et_full/log.txt" | tr '\n' ' ')"
    grep -E "engine|sample" "$OUT/et_full.log" | head -n 4 | tee -a "$SUMMARY"
    if cmp -s <(grep -E '^[0-9]+ (train|val)' "$OUT/et_full/log.txt") <(grep -E '^[0-9]+ (train|val)' "$OUT/et_part/log.txt"); then
      note "engine-train: stopped at 4 + resumed = uninterrupted, bit for bit (train and val lines)"
    else
      note "engine-train: resumed run DIFFERS:"; diff <(grep -E '^[0-9]+ (train|val)' "$OUT/et_full/log.txt") \
        <(grep -E '^[0-9]+ (train|val)' "$OUT/et_part/log.txt") | head -n 10 | tee -a "$SUMMARY"
    fi
    ;;
  cudnn)  # cuDNN's SDPA backend (both binaries built with --features cudnn): its checks and timings beside PyTorch's
          # SDPA (scripts/attn-bench.sh), then the engine's checks with TOKENMILL_ATTENTION=cudnn
    OUT="$OUT/attn" scripts/attn-bench.sh --check --cudnn --reps "${ATTN_REPS:-20}" > "$OUT/attn_cudnn.log" 2>&1
    note "cudnn attention rc=$?:"
    grep -E "^(PASS|FAIL)|^=====|cuDNN|deterministic bwd|B=64 T=1024" "$OUT/attn_cudnn.log" | tee -a "$SUMMARY"
    TOKENMILL_ATTENTION=cudnn KERNEL_MODULES=gpu_engine MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-60}" \
      scripts/gpu-kernel-check.sh run > "$OUT/engine_cudnn.log" 2>&1
    note "engine checks with cuDNN attention rc=$?:"; sed -n '/===== summary/,$p' "$OUT/engine_cudnn.log" | tee -a "$SUMMARY"
    grep -E "cuda engine|worst|after resume" "$OUT/engine_cudnn.log" | sort -u | tee -a "$SUMMARY"
    ;;
  profile)  # per-kernel CUDA-event breakdown of the cuda engine's micro-step (docs/PERF.md); PROFILE_BASE=1 also
            # profiles .dist/base/tokenmill-base (the binary before this session's changes) at the same settings
    for bin in "$BIN" ${PROFILE_BASE:+"$PWD/.dist/base/tokenmill-base"}; do
      [ "$bin" = "$BIN" ] && tag=new || { unpack "$bin"; tag=base; }
      pf="$OUT/profile_${MODEL:-small}_B${BENCH_B:-64}_$tag.txt"
      TOKENMILL_ENGINE_PROFILE=1 "$bin" bench --model "${MODEL:-small}" --batch "${BENCH_B:-64}" --seq-len 1024 \
        --dtype bf16 --device cuda --total-batch "${TOTAL:-524288}" --warmup 1 --steps 3 --what train_step \
        --engine cuda > "$pf" 2>&1
      note "profile ${MODEL:-small} B=${BENCH_B:-64} ($tag) rc=$?:"; sed -n '/engine profile/,$p' "$pf" | tee -a "$SUMMARY"
    done
    ;;
  ab)  # train_step (tokenmill bench, median of 3 after 1 warm-up) of .dist/base/tokenmill-base and of this binary,
       # the latter with the cuBLASLt heuristic (the kernels alone) and with the default gemm tables, per AB_SPECS
       # entry MODEL:B:TOTAL_TOKENS, back to back in one call.
    unpack "$PWD/.dist/base/tokenmill-base"
    for spec in ${AB_SPECS:-gpt2-124m:64:524288 llama-1b:8:65536 gpt2-1558m:8:65536}; do
      IFS=: read -r m b tot <<< "$spec"
      for v in base heuristic auto; do
        bin="$BIN"; [ $v = base ] && bin="$PWD/.dist/base/tokenmill-base"
        tab=(); [ $v = heuristic ] && tab=(TOKENMILL_GEMM_TABLE=heuristic)
        env "${tab[@]}" "$bin" bench --model "$m" --batch "$b" --seq-len 1024 --dtype bf16 --device cuda \
          --total-batch "$tot" --warmup 1 --steps "${AB_STEPS:-3}" --what train_step --engine cuda \
          > "$OUT/ab_${m}_B${b}_$v.txt" 2>&1
        note "ab $m B=$b $v rc=$?: $(grep -E 'train_step' "$OUT/ab_${m}_B${b}_$v.txt" | tail -n 1)"
        grep -E 'products:' "$OUT/ab_${m}_B${b}_$v.txt" | head -n 1 >> "$SUMMARY"
      done
    done
    ;;
  bitwise)  # GPT-2 124M, 20 steps: the generalised engine's losses against the previous engine's binary, bit for bit
    # At the config's B=64 (BITWISE_B). Below B=64 the bits differ from 3599339 by design: since session 6 the norm
    # backward gives each block fewer rows where N / 256 blocks would not fill the GPU (N = B*T = 16384 on 132 SMs:
    # 64-row blocks, not 256), which changes the order of the dw/db sums (H100, B=16, 2026-12-07: steps 0-3 equal,
    # step 4 10.497673 -> 10.497678).
    # .dist/base/tokenmill-base(.xz|.gz): the binary of the commit before the decoder engine (docs/PERF.md says which).
    data
    unpack "$PWD/.dist/base/tokenmill-base"
    bw=(--data "$OUT/fw" --device cuda --dtype bf16 --max-steps 20
      --set data.micro_batch=${BITWISE_B:-64} --set eval.val_every=10 --set eval.val_steps=2 --set eval.sample_every=0
      --set eval.hellaswag_every=0 --set checkpoint.every=0)
    rm -rf "$OUT/bw_base" "$OUT/bw_new"
    # The earlier binary knows no [engine] table (its options were environment variables then): its config without it.
    sed '/^\[engine\]/,$d' configs/gpt2-124m.toml > "$OUT/gpt2-124m-base.toml"
    # `gpt2-cuda` is that binary's only name for the engine (this one keeps it as an alias of `cuda`).
    .dist/base/tokenmill-base train "${bw[@]}" --config "$OUT/gpt2-124m-base.toml" --set 'run.engine="gpt2-cuda"' \
      --log-dir "$OUT/bw_base" > "$OUT/bw_base.log" 2>&1; r1=$?
    # BITWISE_TABLE (e.g. heuristic) sets the new binary's gemm_table alone (the base binary may not know the value).
    env ${BITWISE_TABLE:+TOKENMILL_GEMM_TABLE=$BITWISE_TABLE} "$BIN" train "${bw[@]}" --config configs/gpt2-124m.toml \
      --set 'run.engine="cuda"' --log-dir "$OUT/bw_new" > "$OUT/bw_new.log" 2>&1; r2=$?
    n=$(grep -cE '^[0-9]+ train' "$OUT/bw_new/log.txt" 2>/dev/null)
    if [ $r1 = 0 ] && [ $r2 = 0 ] && [ "$n" = 20 ] &&
       cmp -s <(grep -E '^[0-9]+ (train|val)' "$OUT/bw_base/log.txt") <(grep -E '^[0-9]+ (train|val)' "$OUT/bw_new/log.txt"); then
      note "bitwise: GPT-2 124M, 20 steps (B=${BITWISE_B:-16}): decoder engine = the previous engine (7b291f5), every train and val line bit for bit"
    else
      note "bitwise: DIFFERS (rc $r1/$r2, $n train lines):"; diff <(grep -E '^[0-9]+ (train|val)' "$OUT/bw_base/log.txt") \
        <(grep -E '^[0-9]+ (train|val)' "$OUT/bw_new/log.txt") | head -n 10 | tee -a "$SUMMARY"
    fi
    grep -E '^[0-9]+ train' "$OUT/bw_new/log.txt" | sed -n '1p;$p' | tee -a "$SUMMARY"
    ;;
  hellaswag)  # issue 21: all 10,042 tasks (.dist/hellaswag_val.bin from `tokenmill prep hellaswag`), in the training loop
              # and standalone, on a 2-step checkpoint of each HS_MODELS config (only the time is of interest here)
    data
    for cfg in ${HS_MODELS:-gpt2-124m llama-124m}; do
      rm -rf "$OUT/hs_$cfg"
      "$BIN" train --config "configs/$cfg.toml" --data "$OUT/fw" --device cuda --dtype bf16 --max-steps 2 \
        --set data.micro_batch=16 --set data.total_batch_tokens=16384 --set eval.val_every=2 --set eval.val_steps=20 \
        --set eval.sample_every=0 --set eval.hellaswag_every=2 --set "eval.hellaswag_file=\"$PWD/.dist/hellaswag_val.bin\"" \
        --set checkpoint.every=2 --log-dir "$OUT/hs_$cfg" > "$OUT/hs_train_$cfg.log" 2>&1
      note "hellaswag $cfg in the loop rc=$?: $(grep -E 'took' "$OUT/hs_train_$cfg.log" | tr '\n' ' ')"
      ck=$(ls -d "$OUT/hs_$cfg"/checkpoints/step_* 2>/dev/null | tail -n 1)
      for dt in ${HS_DTYPES:-bf16 fp32}; do
        # HS_COMPARE=1: the bf16 evaluation also scores in fp32 and counts the predictions that flip.
        cmp=(); [ "$dt" = bf16 ] && [ "${HS_COMPARE:-0}" = 1 ] && cmp=(--compare-fp32)
        "$BIN" eval hellaswag --model "$ck" --data .dist/hellaswag_val.bin --device cuda --dtype $dt "${cmp[@]}" \
          > "$OUT/hs_eval_${cfg}_$dt.log" 2>&1
        note "hellaswag $cfg standalone $dt rc=$?: $(tail -n 3 "$OUT/hs_eval_${cfg}_$dt.log" | tr '\n' ' ')"
      done
    done
    ;;
  gemm)  # cuBLASLt's algorithm per matmul shape, tuned into a table (bench gemm-tune), then train_step without and
         # with it, same call. GEMM_SPECS: PRESET:B ... The later llama/llama-1b/compare steps use a table made here
         # for their preset and B.
    for spec in ${GEMM_SPECS:-llama-124m:64 llama-1b:8 gpt2-124m:64}; do
      m=${spec%%:*}; b=${spec##*:}; tab="$OUT/gemm_${m}_B$b.toml"
      "$BIN" bench gemm-tune --model "$m" --batch "$b" --out "$tab" > "$OUT/gemm_tune_$m.txt" 2>&1
      note "gemm-tune $m B=$b rc=$?: $(grep -E '^all products' "$OUT/gemm_tune_$m.txt")"
      [ "${GEMM_AB:-1}" = 0 ] && continue  # tune only (the table is judged by a later compare)
      for use in "" "$tab"; do
        TOKENMILL_GEMM_TABLE="$use" "$BIN" bench --model "$m" --batch "$b" --seq-len 1024 --dtype bf16 --device cuda \
          --total-batch $((b * 1024 * 8)) --warmup 1 --steps "${GEMM_STEPS:-3}" --what train_step --engine cuda \
          > "$OUT/gemm_bench_$m${use:+_table}.txt" 2>&1
        note "train_step $m B=$b ${use:+with the table}${use:-heuristic}: $(grep -oE 'median [0-9.]+ ms.*' "$OUT/gemm_bench_$m${use:+_table}.txt" | tail -n 1)"
      done
      # Later steps use the table only where it made the step faster (by 0.5% or more).
      ms() { grep -oE 'median [0-9.]+ ms' "$1" | tail -n 1 | awk '{ print $2 }'; }
      if ! awk -v a="$(ms "$OUT/gemm_bench_$m.txt")" -v b="$(ms "$OUT/gemm_bench_${m}_table.txt")" \
           'BEGIN { exit !(a > 0 && b > 0 && b < 0.995 * a) }'; then
        mv "$tab" "$tab.unused"; note "gemm table for $m B=$b not faster: later steps use the heuristic"
      fi
    done
    ;;
  llama | llama-1b)  # bench compare of a Llama preset against HF transformers' LlamaForCausalLM + torch.compile
    if [ "$step" = llama ]; then m=llama-124m; b=${LLAMA_B:-64}; tb=524288; else m=llama-1b; b=${LLAMA1B_B:-8}; tb=131072; fi
    tab="$OUT/gemm_${m}_B$b.toml"; [ -f "$tab" ] || tab=""
    TOKENMILL_GEMM_TABLE="$tab" "$BIN" bench compare --model $m --batch "$b" --seq-len 1024 --total-batch "$tb" \
      --warmup "${BENCH_WARMUP:-2}" --steps "${BENCH_STEPS:-5}" --device cuda --python "$PY" \
      --engine "${ENGINE:-auto}" --json "$OUT/compare_$m.json" > "$OUT/compare_$m.txt" 2>&1
    note "compare $m B=$b rc=$? ${tab:+(gemm table $tab)}:"; tail -n 6 "$OUT/compare_$m.txt" | tee -a "$SUMMARY"
    ;;
  smol)  # issue 27 end to end at SmolLM2-135M's shape (llama-smol135m): a random LlamaForCausalLM + a SmolLM2-style
          # tokenizer of 49,152 ids written by transformers (scripts/smol_hf.py; no network), two shard dirs prepped
          # with that tokenizer from the two halves of the parquet, SMOL_STEPS steps on the engine from a 0.7/0.3
          # mixture with --init, `export hf` of the checkpoint the last validation ran on, its val loss in transformers
          # beside tokenmill's, then bench compare of the preset against HF + torch.compile. Each stage's log is
          # $OUT/smol/STAGE.log; a stage whose input failed is skipped and says so. For a CPU dry run of the wiring:
          # SMOL_DEVICE=cpu SMOL_DTYPE=fp32 SMOL_ENGINE=autograd SMOL_BENCH=0 SMOL_MAKE_ARGS="--vocab 2048 --layers 2
          # --embd 64 --heads 4 --kv-heads 2 --hidden 128 --block 256" SMOL_B=2 SMOL_T=64 SMOL_TOTAL=256.
    S="$OUT/smol"; rm -rf "$S"; mkdir -p "$S/in_a" "$S/in_b"
    # Validation at steps 0, 10, 20, ... and after the last update; a val loss logged at step N is on the weights of N
    # updates (checkpoint step_N), so the run's last val loss is that of its final checkpoint, the one exported.
    steps=${SMOL_STEPS:-31}
    b=${SMOL_B:-8}; t=${SMOL_T:-1024}; vs=${SMOL_VAL_STEPS:-4}; dev=${SMOL_DEVICE:-cuda}
    files=("$(cd "${SMOL_PARQUET:-.dist/parquet}" && pwd)"/*.parquet); half=$(( (${#files[@]} + 1) / 2 ))
    ln -s "${files[@]:0:$half}" "$S/in_a/"; ln -s "${files[@]:$half}" "$S/in_b/"
    ok=1
    stage() {  # stage NAME CMD...: run it (unless an earlier stage failed), log to $S/NAME.log, note its rc
      local name=$1; shift
      if [ $ok = 0 ]; then note "smol $name: skipped (an earlier stage failed)"; return; fi
      "$@" > "$S/$name.log" 2>&1; local rc=$?
      note "smol $name rc=$rc: $(grep -v '^\s*$' "$S/$name.log" | tail -n 1)"
      [ $rc = 0 ] || { ok=0; tail -n 5 "$S/$name.log" | tee -a "$SUMMARY"; }
    }
    # shellcheck disable=SC2086
    stage make "$PY" scripts/smol_hf.py make "$S/init" --parquet "$(dirname "${files[0]}")" \
      --text data/tinyshakespeare.txt ${SMOL_MAKE_ARGS:-}
    [ $ok = 1 ] && grep -E '^tokenizer:' "$S/make.log" | tee -a "$SUMMARY"
    for src in a b; do
      stage "prep_$src" "$BIN" prep fineweb --no-progress --input "$S/in_$src" --out "$S/$src" \
        --shard-size "${SMOL_SHARD:-500000}" --tokenizer "$S/init"
    done
    [ $ok = 1 ] && grep -ho 'encoded by .*' "$S/prep_a.log" | head -n 1 | sed 's/^/smol prep: /' | tee -a "$SUMMARY"
    stage train "$BIN" train --init "$S/init" --data "$S/a:0.7,$S/b:0.3" --device "$dev" \
      --dtype "${SMOL_DTYPE:-bf16}" --max-steps "$steps" --log-dir "$S/run" --set data.micro_batch="$b" \
      --set data.seq_len="$t" --set data.total_batch_tokens="${SMOL_TOTAL:-$((b * t * 4))}" \
      --set optim.warmup_steps=5 --set eval.val_every=10 --set eval.val_steps="$vs" --set eval.sample_every=0 \
      --set eval.hellaswag_every=0 --set checkpoint.every="$steps" --set "run.engine=\"${SMOL_ENGINE:-cuda}\""
    [ $ok = 1 ] && grep -E '^model: |\| tokens: ' "$S/train.log" | sed -n '1p;$p' | tee -a "$SUMMARY"
    last=$(grep -o '"kind":"val","step":[0-9]*' "$S/run/metrics.jsonl" 2>/dev/null | tail -n 1 | grep -o '[0-9]*$')
    stage export "$BIN" export hf "$S/run/checkpoints/$(printf 'step_%06d' "$last")" "$S/export"
    stage val "$PY" scripts/smol_hf.py val "$S/export" --run "$S/run" --step "$last" --source "$S/a:0.7" \
      --source "$S/b:0.3" --batch "$b" --seq-len "$t" --val-steps "$vs" --device "$dev"
    [ $ok = 1 ] && grep -E '^val ' "$S/val.log" | tee -a "$SUMMARY"
    if [ "${SMOL_BENCH:-1}" = 1 ]; then
      m=llama-smol135m; bb=${SMOL_BENCH_B:-32}; tab="$OUT/gemm_${m}_B$bb.toml"; [ -f "$tab" ] || tab=""
      TOKENMILL_GEMM_TABLE="$tab" "$BIN" bench compare --model $m --batch "$bb" --seq-len 1024 --total-batch 524288 \
        --warmup "${BENCH_WARMUP:-2}" --steps "${BENCH_STEPS:-5}" --device cuda --python "$PY" \
        --engine "${ENGINE:-auto}" --json "$OUT/compare_$m.json" > "$OUT/compare_$m.txt" 2>&1
      note "compare $m B=$bb rc=$? ${tab:+(gemm table $tab)}:"; tail -n 6 "$OUT/compare_$m.txt" | tee -a "$SUMMARY"
    fi
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
echo "===== summary"; cat "$SUMMARY"

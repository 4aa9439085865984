#!/usr/bin/env bash
# Flash attention, tokenmill against PyTorch's SDPA backends, in one call on the GPU machine: runs
# `tokenmill bench attention` (CUDA events, medians; every launch variant with --variants) and
# reference/attention_sdpa.py (cuDNN, flash = FlashAttention-2, memory-efficient) on the same shapes, then
# prints one table: ms and TFLOP/s per implementation and shape, and tokenmill's time over each backend's.
#
#   scripts/attn-bench.sh [--check] [--ncu] [--cudnn] [--variants]     # on the GPU machine, from the repo root
# --check first runs the attention tests of the GPU test binary (.dist/kernels/gpu.gz from
# `scripts/gpu-kernel-check.sh build`): the kernels against the CPU twin at T = 1..2048, bitwise repeats, every
# launch variant writing every element; then compute-sanitizer memcheck and racecheck on a small fwd + bwd.
# --cudnn also times tokenmill's cuDNN SDPA backend (a `--features cudnn` binary, which does so by default too):
# rows tokenmill-cudnn (deterministic backward, what [engine] attention = "cudnn" trains with) and
# tokenmill-cudnn-nondet (cuDNN's default backward), then their ratio to PyTorch's cuDNN and the cost of determinism;
# with --check it also runs the cuDNN backend's tests (kernels_cudnn_attention: a gpu binary built with
# KERNEL_FEATURES=cudnn).
# --ncu last reads the hardware counters of the default kernels at B=64, T=1024 (Nsight Compute, clocks left alone:
# --clock-control none) into $OUT/ncu.txt: throughput of the tensor, shared-memory and issue pipes, stall reasons.
# Environment: TOKENMILL (the binary; default: .dist/tokenmill.gz unpacked, else target/release/tokenmill),
# PYTHON (default /opt/torch/.venv/bin/python3 if present, else python3), OUT (a folder for the logs; default a
# temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
CHECK=0
NCU=0
CUDNN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK=1; shift ;;
    --ncu) NCU=1; shift ;;
    --cudnn) CUDNN=1; shift ;;
    *) break ;;
  esac
done
BENCH_ARGS=()
[ "$CUDNN" = 1 ] && BENCH_ARGS=(--backend both)
# CUDA 13 user-space libraries (cuBLAS, NVRTC, ...) from wherever the machine has them (as gpu-kernel-check.sh).
libdirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnccl.so.2 libcudart.so.13 libcudnn.so.9; do
  f="$(find / -name "$lib" -not -path '/proc/*' 2>/dev/null | head -n 1 || true)"
  [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
if [ "$CHECK" = 1 ]; then
  bin="$OUT/gpu"; gunzip -c .dist/kernels/gpu.gz > "$bin"; chmod +x "$bin"
  for t in cuda_flash_qkv_matches_cpu cuda_flash_api_variants_write_everything cuda_qkv_op_matches_head_views \
           cuda_matches_cpu; do
    if "$bin" "kernels_attention::$t" --exact --test-threads=1 --nocapture > "$OUT/test-$t.log" 2>&1; then
      echo "PASS $t"; else echo "FAIL $t"; tail -n 20 "$OUT/test-$t.log"; status=1; fi
    grep -hE "max \|diff\||bitwise|written" "$OUT/test-$t.log" | sed 's/^/    /' | head -n 40 || true
  done
  if [ "$CUDNN" = 1 ]; then
    for t in cuda_cudnn_matches_native_and_cpu cuda_cudnn_backward_repeats_bitwise cuda_engine_with_cudnn_matches_native; do
      if "$bin" "kernels_cudnn_attention::cudnn::$t" --exact --test-threads=1 --nocapture > "$OUT/test-$t.log" 2>&1; then
        echo "PASS $t"; else echo "FAIL $t"; tail -n 20 "$OUT/test-$t.log"; status=1; fi
      grep -hE "max \|diff\||bitwise|written|cuDNN|loss|relative|runs" "$OUT/test-$t.log" | sed 's/^/    /' | head -n 60 || true
    done
  fi
  for tool in memcheck racecheck; do
    if compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin" kernels_attention::cuda_flash_sanitizer_case \
        --exact --test-threads=1 > "$OUT/sanitizer-$tool.log" 2>&1; then
      echo "PASS compute-sanitizer $tool: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | head -n 1)"
    else
      echo "FAIL compute-sanitizer $tool"; tail -n 30 "$OUT/sanitizer-$tool.log"; status=1
    fi
  done
fi
if [ -z "${TOKENMILL:-}" ]; then
  if [ -f .dist/tokenmill.gz ]; then
    TOKENMILL="$OUT/tokenmill"; gunzip -c .dist/tokenmill.gz > "$TOKENMILL"; chmod +x "$TOKENMILL"
  else
    TOKENMILL=target/release/tokenmill
  fi
fi
PYTHON="${PYTHON:-$( [ -x /opt/torch/.venv/bin/python3 ] && echo /opt/torch/.venv/bin/python3 || echo python3)}"

"$TOKENMILL" bench attention "${BENCH_ARGS[@]}" "$@" 2>&1 | tee "$OUT/attn-tokenmill.log"
"$PYTHON" reference/attention_sdpa.py 2>&1 | tee "$OUT/attn-torch.log"

python3 - "$OUT/attn-tokenmill.log" "$OUT/attn-torch.log" <<'PY'
import sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        f = line.split()
        if len(f) == 8 and f[0] == "ATTN":
            rows.setdefault(tuple(map(int, f[2:6])), {})[f[1]] = (float(f[6]), float(f[7]))
print("\n===== flash attention, bf16, causal (ms; TFLOP/s: causal half, bwd = 2.5x fwd; ratio = tokenmill / backend)")
print(f"{'shape':<22} {'impl':<16} {'fwd ms':>8} {'TFLOP/s':>8} {'bwd ms':>8} {'TFLOP/s':>8} {'f+b ms':>8} {'ours/x':>7}")
for (B, T, NH, HS), impls in rows.items():
    flop = 2.0 * B * NH * T * T * HS
    ours = impls.get("tokenmill")
    for name, (fw, bw) in impls.items():
        ratio = f"{(ours[0] + ours[1]) / (fw + bw):7.2f}" if ours and fw == fw and bw == bw else "      -"
        print(f"{f'B={B} T={T} NH={NH} HS={HS}':<22} {name:<16} {fw:8.3f} {flop / fw / 1e9:8.1f} {bw:8.3f} "
              f"{2.5 * flop / bw / 1e9:8.1f} {fw + bw:8.3f} {ratio}")
cudnn = [(s, i) for s, i in rows.items() if "tokenmill-cudnn" in i]
if cudnn:
    print("\n===== tokenmill's cuDNN backend (f+b ms): against PyTorch's cuDNN SDPA, and the deterministic backward's cost")
    for (B, T, NH, HS), impls in cudnn:
        det, nondet, torch = (impls.get(k) for k in ("tokenmill-cudnn", "tokenmill-cudnn-nondet", "torch-cudnn"))
        line = f"B={B} T={T} NH={NH} HS={HS}: tokenmill-cudnn {sum(det):.3f}"
        if torch and torch[0] == torch[0]:
            line += f", torch-cudnn {sum(torch):.3f} (ratio {sum(det) / sum(torch):.3f})"
        if nondet:
            line += f"; deterministic bwd {det[1]:.3f} vs default {nondet[1]:.3f} ms ({det[1] / nondet[1]:.3f}x)"
        print(line)
PY
if [ "$NCU" = 1 ] && command -v ncu >/dev/null; then
  # The first shape's first three flash kernels: forward, dQ, dK/dV (one timed run each, no warm-up).
  timeout 240 ncu --clock-control none -k regex:flash_ -c 3 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    "$TOKENMILL" bench attention --backend native --warmup 0 --reps 1 > "$OUT/ncu.txt" 2>&1 || echo "ncu failed (rc $?)"
  grep -E "flash_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Issue Slots Busy|Warp Cycles Per Issued|Stall|Shared Memory|Executed Ipc A" \
    "$OUT/ncu.txt" | head -n 60 || true
fi
exit $status

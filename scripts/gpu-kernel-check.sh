#!/usr/bin/env bash
# Check tokenmill's fused CUDA kernels (the candle ops of src/model/kernels, their kernels in src/cuda) on a GPU: correctness against the CPU twins, a memcheck
# pass, and timings at GPT-2 124M shapes. Two steps, because the GPU machine need not have Rust or a toolkit:
#
#   scripts/gpu-kernel-check.sh build   # here: compile the kernel test binaries with --features cuda into
#                                       # .dist/kernels/ (git-ignored); uses nvcc on PATH, or the PyPI toolchain
#                                       # that `scripts/build-cuda.sh --pypi-toolchain` installed
#   scripts/gpu-kernel-check.sh run     # on the GPU machine, from the repo root with .dist/kernels/ present
#
# KERNEL_FEATURES=cudnn (build) adds cargo features to `cuda`: with cudnn, the cuDNN SDPA backend and its tests
# (kernels_cudnn_attention; needs the cuDNN wheels that `scripts/build-cuda.sh --pypi-toolchain --features cudnn`
# installs, found by build.rs beside the PyPI CUDA, or CUDNN_INCLUDE_DIR / CUDNN_FRONTEND_INCLUDE_DIR / CUDNN_LIB_DIR).
#
# `run` prints each test's output, then a short table last (one line per check or timing). Exit status: non-zero
# if any correctness test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=.dist/kernels
# One binary (tests/gpu/main.rs) holding every test file with a CUDA part, as these modules.
TESTS=(gpu)
# KERNEL_MODULES="kernels_embedding dist_nccl" runs a subset.
read -ra MODULES <<< "${KERNEL_MODULES:-kernels_cross_entropy kernels_attention kernels_cudnn_attention kernels_norm_act kernels_embedding kernels_wgmma dist_nccl gpu_model}"

build() {
  if ! command -v nvcc >/dev/null; then
    PREFIX="${TOKENMILL_CUDA_PREFIX:-$HOME/.cache/tokenmill-cuda}"
    [ -x "$PREFIX/venv/bin/python" ] || { echo "no nvcc: run scripts/build-cuda.sh --pypi-toolchain first" >&2; exit 1; }
    # The same environment scripts/build-cuda.sh --pypi-toolchain exports (same RUSTFLAGS: no rebuild of deps).
    CU="$("$PREFIX/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
    export PATH="$CU/bin:$PATH" CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_HOME="$CU"
    export LIBRARY_PATH="$PREFIX/link:$CU/lib:${LIBRARY_PATH:-}"
    export RUSTFLAGS="-L $PREFIX/link -L $CU/lib ${RUSTFLAGS:-}"
    case ",${KERNEL_FEATURES:-}," in *,cudnn,*)
      # As scripts/build-cuda.sh exports them: the same environment, so build.rs does not rerun and rebuild the lib.
      export CUDNN_INCLUDE_DIR="$CU/../cudnn/include" CUDNN_LIB_DIR="$CU/../cudnn/lib" CUDNN_FRONTEND_INCLUDE_DIR="$CU/../../include" ;;
    esac
  fi
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  local args=()
  for t in "${TESTS[@]}"; do args+=(--test "$t"); done
  local features="cuda${KERNEL_FEATURES:+,$KERNEL_FEATURES}"
  cargo test --release --features "$features" --no-run "${args[@]}" --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' > /tmp/tokenmill-kernel-tests.txt
  [ -s /tmp/tokenmill-kernel-tests.txt ] || { echo "build failed: rerun cargo test --release --features $features --no-run to see why" >&2; exit 1; }
  mkdir -p "$DIST"
  while read -r name exe; do
    strip -o "$DIST/$name" "$exe"
    rm -f "$DIST/$name.gz" "$DIST/$name.xz"
    xz -T2 -9 -f "$DIST/$name"  # about half gzip's size: the device call carries at most 64 MiB
  done < /tmp/tokenmill-kernel-tests.txt
  ls -la "$DIST"
}

run() {
  # CUDA 13 user-space libraries (cuBLAS, cuRAND, NVRTC, NCCL; cuDNN 9 for a cudnn build) from wherever the machine
  # has them.
  local libdirs=""
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnccl.so.2 libcudart.so.13 libcudnn.so.9; do
    local f
    f="$(find / -name "$lib" -not -path '/proc/*' 2>/dev/null | head -n 1 || true)"
    [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")"
  done
  export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local tmp; tmp="$(mktemp -d)"
  local status=0
  : > "$tmp/summary"
  for t in "${TESTS[@]}"; do
    if [ -f "$DIST/$t.xz" ]; then xz -dc "$DIST/$t.xz" > "$tmp/$t"; else gunzip -c "$DIST/$t.gz" > "$tmp/$t"; fi
    chmod +x "$tmp/$t"
  done
  local bin="$tmp/gpu"
  for t in "${MODULES[@]}"; do
    echo "=== $t (correctness)"
    if "$bin" "$t::" --test-threads=1 --nocapture 2>&1 | tee "$tmp/$t.log"; then
      echo "PASS $t" >> "$tmp/summary"
    else
      echo "FAIL $t" >> "$tmp/summary"; status=1
    fi
    if command -v compute-sanitizer >/dev/null && "$bin" --list 2>/dev/null | grep -q "^$t::cuda_matches_cpu: test"; then
      echo "=== $t cuda_matches_cpu under compute-sanitizer memcheck"
      local rc=0
      timeout "${MEMCHECK_TIMEOUT:-90}" compute-sanitizer --tool memcheck --error-exitcode 9 "$bin" "$t::cuda_matches_cpu" \
        --exact --test-threads=1 > "$tmp/$t.memcheck" 2>&1 || rc=$?
      if [ "$rc" = 0 ]; then
        echo "PASS $t memcheck" >> "$tmp/summary"
      elif [ "$rc" = 124 ]; then
        echo "n/a  $t memcheck: timed out after ${MEMCHECK_TIMEOUT:-90} s (not a finding)" >> "$tmp/summary"
      else
        tail -n 30 "$tmp/$t.memcheck"; echo "FAIL $t memcheck (rc $rc)" >> "$tmp/summary"; status=1
      fi
    fi
    echo "=== $t (timings)"
    "$bin" "$t::cuda_timing" --ignored --test-threads=1 --nocapture 2>&1 | tee "$tmp/$t.timing" || status=1
  done
  echo
  echo "===== summary"
  cat "$tmp/summary"
  grep -h -E "^(cuda .*max \|diff\||SKIPPED|GRADCHECK|FDCHECK)" "$tmp"/*.log || true
  grep -h "^TIMING" "$tmp"/*.timing || true
  return $status
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac

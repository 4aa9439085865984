#!/usr/bin/env bash
# Build tokenmill with the `cuda` feature (candle's CUDA backend) for an NVIDIA GPU.
#
# Two situations:
#  * A machine with a normal CUDA toolkit (nvcc on PATH, libcuda from the driver): this script just runs
#    `cargo build --release --features cuda` with CUDA_COMPUTE_CAP (default 90 = H100/H200).
#  * A machine WITHOUT a GPU or CUDA toolkit (how tokenmill's own GPU binaries are built, then copied to the GPU box):
#    pass --pypi-toolchain. nvcc 13.0 and the CUDA libraries come from PyPI wheels (pinned: a newer nvvm writes PTX
#    ISA 9.5, which a 580-series driver refuses), and the driver's libcuda.so is replaced at link time by a stub with the
#    same SONAME whose symbols are the driver API names cudarc binds; the real libcuda.so.1 is loaded at run time.
#    Measured: first build 11-12 min on 2 cores (candle-kernels' nvcc work), then incremental.
#
# With `--features cudnn` among the cargo args (cuDNN's SDPA as a second attention backend), --pypi-toolchain also
# installs libcudnn 9 with its headers and the header-only cuDNN frontend, pinned: cuDNN 9.19.0.56 is the one
# PyTorch 2.11 (cu130) ships, what the GPU machine loads at run time (libcudnn.so.9 from its torch venv), and
# frontend 1.18 is of the same release; CUDNN_INCLUDE_DIR, CUDNN_FRONTEND_INCLUDE_DIR and CUDNN_LIB_DIR tell build.rs
# where they are (with a system toolkit, set them if cuDNN is not on the default paths).
#
# --check (after --pypi-toolchain, if given): instead of building, run clippy (-D warnings) over every target with the
# `cuda` feature and the extra cargo args, compiling tokenmill's own kernels with nvcc and the cuDNN shim with the
# wheels' headers but not candle-kernels' (scripts/nvcc-check.sh: nothing is linked): what CI runs
# (`.ci/run`), so the GPU code cannot rot unseen.
#
# Usage: scripts/build-cuda.sh [--pypi-toolchain] [--check] [extra cargo args, e.g. --features cudnn]
# Output: target/release/tokenmill (and .dist/tokenmill.xz, ready to ship to a GPU machine: xz is about half the size of
# gzip for this binary, and a device call carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYPI=0
if [ "${1:-}" = "--pypi-toolchain" ]; then PYPI=1; shift; fi
CHECK=0
if [ "${1:-}" = "--check" ]; then CHECK=1; shift; fi
CUDNN=0
case " $* " in *cudnn*) CUDNN=1 ;; esac
CUDNN_PIP=()
[ "$CUDNN" = 1 ] && CUDNN_PIP=("nvidia-cudnn-cu13==9.19.0.56" "nvidia-cudnn-frontend==1.18.0")
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

if [ "$PYPI" = 1 ]; then
  PREFIX="${TOKENMILL_CUDA_PREFIX:-$HOME/.cache/tokenmill-cuda}"
  mkdir -p "$PREFIX"
  [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
  # A check links nothing: the compiler and headers suffice (cuBLAS, cuRAND and NCCL are only linked against).
  LINK_PIP=("nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.5.25" "nvidia-nccl-cu13==2.28.9")
  [ "$CHECK" = 1 ] && LINK_PIP=()
  "$PREFIX/venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88" "${LINK_PIP[@]}" \
    "${CUDNN_PIP[@]}" ${TOKENMILL_CUDA_EXTRA_PIP:-}
  CU="$("$PREFIX/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
  mkdir -p "$PREFIX/link"
  if [ "$CHECK" = 0 ]; then
  for l in cublas cublasLt cudart nvrtc; do ln -sf "$CU/lib/lib$l.so.13" "$PREFIX/link/lib$l.so"; done
  ln -sf "$CU/lib/libcurand.so.10" "$PREFIX/link/libcurand.so"
  # NCCL (data-parallel training) ships in its own wheel, outside cu13/.
  NCCL_LIB="$(ls "$CU"/../nccl/lib/libnccl.so.2 "$CU"/lib/libnccl.so.2 2>/dev/null | head -n 1 || true)"
  [ -n "$NCCL_LIB" ] || { echo "libnccl.so.2 not found in the nvidia-nccl-cu13 wheel" >&2; exit 1; }
  ln -sf "$NCCL_LIB" "$PREFIX/link/libnccl.so"
  cargo fetch -q
  CUDARC_SRC="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -n 1 || true)"
  [ -n "$CUDARC_SRC" ] || { echo "cudarc source not found after cargo fetch" >&2; exit 1; }
  grep -rohE "pub (unsafe )?fn (cu[A-Za-z0-9_]+)\(" "$CUDARC_SRC/src/driver/sys/" \
    | sed -E 's/pub (unsafe )?fn //; s/\(//' | sort -u | awk '{print "void "$1"(void){}"}' > "$PREFIX/link/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$PREFIX/link/libcuda.so" "$PREFIX/link/cuda_stub.c"
  fi
  export PATH="$CU/bin:$PATH"
  export CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_HOME="$CU"
  export LIBRARY_PATH="$PREFIX/link:$CU/lib:${LIBRARY_PATH:-}"
  export RUSTFLAGS="-L $PREFIX/link -L $CU/lib ${RUSTFLAGS:-}"
  if [ "$CUDNN" = 1 ]; then
    # The wheels' layout: nvidia/cudnn/{include,lib} beside nvidia/cu13, the frontend's headers in site-packages/include.
    export CUDNN_INCLUDE_DIR="$CU/../cudnn/include" CUDNN_LIB_DIR="$CU/../cudnn/lib" CUDNN_FRONTEND_INCLUDE_DIR="$CU/../../include"
    [ -f "$CUDNN_FRONTEND_INCLUDE_DIR/cudnn_frontend.h" ] || { echo "cudnn_frontend.h not found in $CUDNN_FRONTEND_INCLUDE_DIR" >&2; exit 1; }
    [ -f "$CUDNN_LIB_DIR/libcudnn.so.9" ] || { echo "libcudnn.so.9 not found in $CUDNN_LIB_DIR" >&2; exit 1; }
  fi
fi

command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit or use --pypi-toolchain" >&2; exit 1; }
if [ "$CHECK" = 1 ]; then
  echo "checking with $(nvcc --version | tail -n 2 | head -n 1), compute cap $CUDA_COMPUTE_CAP (candle-kernels stubbed)"
  export TOKENMILL_REAL_NVCC="$(command -v nvcc)" NVCC="$PWD/scripts/nvcc-check.sh"
  # The check's own target dir: its stubbed candle-kernels must never meet a real build's.
  exec cargo clippy --locked --all-targets --target-dir target/cuda-check --features cuda "$@" -- -D warnings
fi
echo "building with $(nvcc --version | tail -n 2 | head -n 1), compute cap $CUDA_COMPUTE_CAP"
cargo build --release --features cuda "$@"
mkdir -p .dist
strip -o .dist/tokenmill target/release/tokenmill
rm -f .dist/tokenmill.gz
xz -T2 -9 -kf .dist/tokenmill
ls -la .dist/

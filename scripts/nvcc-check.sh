#!/usr/bin/env bash
# The nvcc of `scripts/build-cuda.sh --check` (CI's type check of the `cuda` and `cudnn` code): every kernel of
# tokenmill's own (src/**/*.cu) goes to the real nvcc ($TOKENMILL_REAL_NVCC), so CI compiles them; the kernels of the
# candle-kernels crate (a dependency from crates.io: ~20 PTX files and a static MoE library whose GGUF matmul instances
# take most of a 12-minute CUDA build on 2 cores) get empty outputs of the right names, since a check links nothing
# and only needs its include_str! targets to exist. Anything else (`--version`, ...) goes to the real nvcc.
set -euo pipefail
real="${TOKENMILL_REAL_NVCC:?set TOKENMILL_REAL_NVCC to the real nvcc}"
dep=0
for a in "$@"; do
  case "$a" in */candle-kernels-*) dep=1 ;; esac
done
[ "$dep" = 1 ] || exec "$real" "$@"
out="" outdir="" ptx=0 lib=0 srcs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
    --output-directory) outdir="$2"; shift ;;
    --ptx) ptx=1 ;;
    --lib) lib=1 ;;
    *.cu) srcs+=("$1") ;;
  esac
  shift
done
if [ "$lib" = 1 ]; then
  printf '!<arch>\n' > "$out"            # an empty static library
elif [ "$ptx" = 1 ]; then
  for s in "${srcs[@]}"; do
    f="$(basename "${s%.cu}").ptx"
    : > "${out:-$outdir/$f}"
  done
else
  : > "$out"                              # an empty object file for the library above
fi

#!/usr/bin/env bash
# The kernel lab: compile tokenmill's CUDA kernels for the CPU under cuda_emu.h and check them against
# double-precision references. Needs g++ >= 11 (C++20 std::barrier); no GPU, no CUDA toolkit.
#   ops:    the candle ops' kernels in src/cuda/ (check.cpp) and flash_attn.cu (check_flash.cpp)
#   engine: the explicit engine's kernels in src/cuda/ (check_engine.cpp)
#   wgmma:  the warpgroup tensor-core product (wgmma.cuh) through wgmma_check.cu (check_wgmma.cpp)
#   pipeline: Hopper's named barriers, mbarriers and bulk copies (pipeline.cuh) through pipeline_check.cu
#           (check_pipeline.cpp)
# Usage: dev/cuda/run.sh [ops [full] | engine | wgmma | pipeline]   (no argument: all four; full: also the larger
# flash-attention cases)
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/tokenmill-kernel-lab"
what="${1:-all}"
[ $# -gt 0 ] && shift
# -fno-strict-aliasing: the kernels reinterpret 16-byte vectors as CUDA does.
build() { g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -Wall -Wno-unknown-pragmas -o "$1" "$2"; }
case "$what" in
  ops | all)
    build "$out" check.cpp
    build "$out-flash" check_flash.cpp
    "$out"
    "$out-flash" "$@"
    ;;&
  engine | all)
    build "$out-engine" check_engine.cpp
    "$out-engine"
    ;;&
  wgmma | all)
    build "$out-wgmma" check_wgmma.cpp
    "$out-wgmma"
    ;;&
  pipeline | all)
    build "$out-pipeline" check_pipeline.cpp
    "$out-pipeline"
    ;;
  ops | engine | wgmma) ;;
  *) echo "usage: $0 [ops [full] | engine | wgmma | pipeline]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Compile the CUDA kernels of src/model/kernels/*.cu and src/cuda/flash_attn.cu for the CPU under cuda_emu.h and check
# them against double-precision references (check.cpp, check_flash.cpp). Needs g++ >= 11 (C++20 std::barrier); no
# GPU, no CUDA toolkit.
# Usage: dev/cuda/run.sh [full]   (full: also the larger flash-attention cases)
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/tokenmill-kernel-lab"
# -fno-strict-aliasing: the kernels reinterpret 16-byte vectors as CUDA does.
g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -Wall -Wno-unknown-pragmas -o "$out" check.cpp
g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -Wall -Wno-unknown-pragmas -o "$out-flash" check_flash.cpp
"$out"
"$out-flash" "$@"

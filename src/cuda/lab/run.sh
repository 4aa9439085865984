#!/usr/bin/env bash
# Compile the GPT-2 engine's CUDA kernels (src/cuda/*.cu) for the CPU under the kernel lab's CUDA emulation and check
# them against double-precision references (check.cpp). Needs g++ >= 11 (C++20 std::barrier); no GPU, no CUDA toolkit.
# Usage: src/cuda/lab/run.sh
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/tokenmill-engine-lab"
# -fno-strict-aliasing: the kernels reinterpret 16-byte vectors as CUDA does.
g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -Wall -Wno-unknown-pragmas -o "$out" check.cpp
"$out"

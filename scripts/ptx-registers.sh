#!/usr/bin/env bash
# Registers and spill bytes per kernel of a PTX file, as ptxas assembles it for one GPU, then ptxas's performance
# notes (C75xx: wgmma serialised, waits injected): the static half of a kernel change's prediction (a change that adds
# spills, serialises products or drops occupancy is timed before it is trusted). No GPU needed.
#   scripts/ptx-registers.sh FILE.ptx [SM]      (SM: 90 by default, the H100/H200; 90a for a PTX built for it)
# ptxas comes from the PyPI nvcc wheel that `scripts/build-cuda.sh --pypi-toolchain` installs (or from PATH).
# To compare two builds of a kernel file: run it on each PTX (a cargo build leaves them in
# target/<dir>/<profile>/build/tokenmill-*/out/<op>.ptx) and diff the outputs.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 FILE.ptx [SM]" >&2; exit 2; }
ptx="$1"
[ -f "$ptx" ] || { echo "$ptx: no such file" >&2; exit 2; }
# A file build.rs compiled for compute_90a (first line `// tokenmill: sm_90a`) assembles only for sm_90a.
default_sm=90
grep -q '^\.target sm_90a' "$ptx" && default_sm=90a
sm="${2:-$default_sm}"
PREFIX="${TOKENMILL_CUDA_PREFIX:-$HOME/.cache/tokenmill-cuda}"
ptxas="$(ls "$PREFIX"/venv/lib/python3*/site-packages/nvidia/cu13/bin/ptxas 2>/dev/null | head -n 1 || true)"
[ -n "$ptxas" ] || ptxas="$(command -v ptxas || true)"
[ -n "$ptxas" ] || { echo "ptxas not found: run scripts/build-cuda.sh --pypi-toolchain --check once" >&2; exit 1; }
out="$(mktemp)"
trap 'rm -f "$out" "$out.cubin"' EXIT
"$ptxas" -arch="sm_$sm" -v "$ptx" -o "$out.cubin" 2> "$out"
# ptxas -v prints, per entry function, "Compiling entry function 'NAME'", then "N bytes spill stores, M bytes spill
# loads" and "Used R registers".
awk '
  /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2) }
  /bytes spill stores/ { st[name] = $5; ld[name] = $9 }
  /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") reg[name] = $(i + 1) }
  END { printf "%-40s %9s %11s %10s\n", "kernel", "registers", "spill st B", "spill ld B";
        for (k in reg) printf "%-40s %9s %11s %10s\n", k, reg[k], st[k], ld[k] }
' "$out" | { read -r header; echo "$header"; sort; }
grep -E "\(C75[0-9]+\)" "$out" | sed -E 's/^ptxas info *: //' || true

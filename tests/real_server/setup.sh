#!/usr/bin/env bash
# The real-server tier's llama-server: ../shared/real-server/setup.sh, built without AMX tile instructions.
#
# That script builds with GGML_NATIVE=ON. On CPUs that advertise AMX inside a VM that does not enable the tile
# state (Sapphire Rapids guests, for one), the native build dies with SIGILL (`tilezero`) on its first matrix
# multiply. Explicit -mno-amx-* flags win over -march=native in GCC, so the kernels fall back to AVX-512.
# The build goes to its own cache folder, so a broken native build elsewhere is never picked up.
#
#   tests/real_server/setup.sh            -> builds if needed (about 12 minutes once), prints the variables
#   tests/real_server/setup.sh --cached   -> prints them only if already built; else exit 3, builds nothing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${LMSTUDIO_SHARED_DIR:-$here/../../../shared}/real-server/setup.sh"
if [ ! -f "$shared" ]; then
  echo "real-server setup: $shared not found (set LMSTUDIO_SHARED_DIR to the folder holding real-server/)" >&2
  exit 3
fi
export LLAMA_REAL_DIR="${LLAMA_REAL_DIR:-$HOME/.cache/lmstudio-real-server-noamx}"
export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
exec bash "$shared" "$@"

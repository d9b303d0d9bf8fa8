#!/usr/bin/env bash
# Configures (once) and builds Tessera into $TESSERA_BUILD_DIR (default: build/).
# Extra arguments go to CMake's configure step, e.g. -DCMAKE_PREFIX_PATH=... -DCMAKE_CUDA_ARCHITECTURES=90
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ ! -f "$TESSERA_BUILD_DIR/build.ninja" ] || [ $# -gt 0 ]; then
  cmake -S "$TESSERA_ROOT" -B "$TESSERA_BUILD_DIR" -G Ninja "$@"
fi
start=$(date +%s)
ninja -C "$TESSERA_BUILD_DIR" -j "$(nproc)"
echo "[build] done in $(( $(date +%s) - start )) s"

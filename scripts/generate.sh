#!/usr/bin/env bash
# The main job: installs what is missing, builds, then generates with the built-in tiny model split
# tensor-parallel over RANKS processes (default 2) under mpirun.
#   scripts/generate.sh                          # 2 ranks, default prompt
#   RANKS=4 scripts/generate.sh --prompt "Hi" --max-tokens 16
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TESSERA_ROOT/scripts/setup.sh"
mkdir -p "$TESSERA_BUILD_DIR"
log="$TESSERA_BUILD_DIR/build-output.log"
"$TESSERA_ROOT/scripts/build.sh" > "$log" 2>&1 || { cat "$log"; exit 1; }
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--prompt "Tessera splits every layer across ranks" --max-tokens 32)
fi
exec mpirun -np "${RANKS:-2}" "$TESSERA_BUILD_DIR/bin/tessera" generate --model tiny "${args[@]}"

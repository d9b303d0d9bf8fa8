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
ranks=${RANKS:-2}
# NCCL needs a GPU per rank: with fewer GPUs than ranks (and no CUDA_VISIBLE_DEVICES chosen), the
# ranks run on the CPU, as on a machine without a GPU.
gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
if [ -z "${CUDA_VISIBLE_DEVICES+set}" ] && [ "${gpus:-0}" -gt 0 ] && [ "$ranks" -gt "$gpus" ]; then
  echo "generate.sh: $gpus GPU(s) for $ranks ranks: running on the CPU (RANKS=$gpus runs on the GPU)" >&2
  export CUDA_VISIBLE_DEVICES=
fi
exec mpirun -np "$ranks" "$TESSERA_BUILD_DIR/bin/tessera" generate --model tiny "${args[@]}"

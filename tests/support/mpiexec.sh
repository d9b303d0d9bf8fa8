#!/usr/bin/env bash
# The MPIEXEC of the tests that start `tessera` under mpirun: the real one (TESSERA_REAL_MPIEXEC),
# with one rule. `tessera` refuses two ranks on one GPU (NCCL needs a GPU per rank), so a test of
# N ranks on a machine with fewer than N GPUs runs every rank on the CPU (CUDA_VISIBLE_DEVICES
# empty), as it would on a machine without one. With N GPUs or more, or none, nothing changes.
set -euo pipefail
np=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    -np | -n | --np | -c) np=${args[i + 1]:-1} ;;
  esac
done
if [ "${CUDA_VISIBLE_DEVICES+set}" = set ]; then
  if [ -n "$CUDA_VISIBLE_DEVICES" ]; then
    gpus=$(($(tr -cd ',' <<< "$CUDA_VISIBLE_DEVICES" | wc -c) + 1))
  else
    gpus=0
  fi
elif command -v nvidia-smi > /dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
else
  gpus=0
fi
if [ "${gpus:-0}" -gt 0 ] && [ "$np" -gt "$gpus" ]; then
  export CUDA_VISIBLE_DEVICES=
fi
exec "${TESSERA_REAL_MPIEXEC:?set by ctest: the mpirun to run}" "$@"

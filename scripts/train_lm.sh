#!/usr/bin/env bash
# Trains the built-in tiny model (runtime/models/tiny/model.safetensors): the decoder LM in the
# tiny shape (Qwen2 layout, 4 layers alternating full / sliding(16), hidden 128, 8 query / 4 KV
# heads, byte vocabulary) on the King James Version of the Bible — public domain (the translation
# of 1611; Debian's bible-kjv-text copyright file: "The copyright for the King James Version text
# of the Bible is expired") — extracted once with Debian's `bible` program. Deterministic: the
# same command gives the same weights (CPU fp32, same rank count and threads).
# Usage: scripts/train_lm.sh [OUT_DIR] [extra tessera train flags...]
set -euo pipefail
source "$(dirname "$0")/env.sh"
out=${1:-$TESSERA_BUILD_DIR/train-lm}
shift || true
mkdir -p "$out"
if [ ! -s "$out/kjv.txt" ]; then
  bible -l0 "Genesis1:1-Revelation22:21" > "$out/kjv.txt" < /dev/null
fi
export TESSERA_NUM_THREADS=1
mpirun -np 2 "$TESSERA_BUILD_DIR/bin/tessera" train --model lm --data "$out/kjv.txt" \
  --lm-layers 4 --lm-hidden 128 --lm-heads 8 --lm-kv-heads 4 --lm-intermediate 256 \
  --lm-window 16 --seq-len 128 --steps 1500 --global-batch 16 --lr 3e-3 --warmup-steps 50 \
  --min-lr 1e-4 --weight-decay 0.01 --clip-grad 1.0 --seed 0 --eval-every 250 \
  --log "$out/loss.jsonl" --checkpoint-dir "$out/checkpoints" --checkpoint-every 250 "$@"
/usr/bin/python3 "$TESSERA_ROOT/scripts/plot_loss.py" "$out/loss.jsonl" "$out/loss.png" \
  --title "decoder LM on the KJV, 2 ranks"
latest=$(cat "$out/checkpoints/latest")
"$TESSERA_BUILD_DIR/bin/tessera" generate --model "$out/checkpoints/$latest" \
  --prompt "And God said" --max-tokens 120

#!/usr/bin/env bash
# The digits benchmark of `tessera train`: the AutoFocusFormer-style cluster-attention classifier on
# scikit-learn's 8x8 digits (Debian's python3-sklearn), 2 data-parallel ranks with one thread each.
# Prints the test accuracy and the wall time, writes the JSONL log and its picture.
# Usage: scripts/train_digits.sh [OUT_DIR] [extra tessera train flags...]
set -euo pipefail
source "$(dirname "$0")/env.sh"
out=${1:-$TESSERA_BUILD_DIR/train-digits}
shift || true
mkdir -p "$out"
export TESSERA_NUM_THREADS=1
t0=$(date +%s.%N)
mpirun -np 2 "$TESSERA_BUILD_DIR/bin/tessera" train --model digits --steps 400 \
  --global-batch 64 --lr 3e-3 --warmup-steps 30 --min-lr 1e-5 --weight-decay 0.05 --seed 0 \
  --eval-every 50 --log "$out/loss.jsonl" --checkpoint-dir "$out/checkpoints" "$@"
t1=$(date +%s.%N)
/usr/bin/python3 "$TESSERA_ROOT/scripts/plot_loss.py" "$out/loss.jsonl" "$out/loss.png" \
  --title "digits cluster-attention classifier, 2 ranks"
python3 - "$out/loss.jsonl" "$t0" "$t1" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
acc = [r for r in recs if "test_accuracy" in r]
print(f"digits: test accuracy {acc[-1]['test_accuracy']:.4f} after {acc[-1]['step']} steps, "
      f"wall time {float(sys.argv[3]) - float(sys.argv[2]):.1f} s (2 ranks); first step at >= 97%: "
      f"{next((r['step'] for r in acc if r['test_accuracy'] >= 0.97), None)}")
PY

#!/usr/bin/env bash
# The README demo: NAS-LoRA fine-tuning of the pretrained LiteMedSAM on real Kvasir-SEG
# polyps on the CPU (150 iterations), then evaluation of the last checkpoint.
# Usage: tools/demo.sh [DATA_ROOT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${1:-$ROOT/../shared/data/kvasir_seg}"
CONFIG="${DEMO_CONFIG:-$ROOT/configs/litemedsam/naslora_litemedsam_1xb4-150_kvasir-128x128.py}"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs/demo}"
PY="$ROOT/.venv/bin/python"

if [[ ! -d "$DATA_ROOT/img_dir/train" ]]; then
    echo "demo: no Kvasir-SEG at $DATA_ROOT (expected img_dir/train, ann_dir/train);" \
         "pass DATA_ROOT=/path/to/kvasir_seg" >&2
    exit 1
fi
"$PY" "$ROOT/tools/train.py" "$CONFIG" --data-root "$DATA_ROOT" --work-dir "$WORK_DIR"
CKPT="$(cat "$WORK_DIR/last_checkpoint")"
"$PY" "$ROOT/tools/test.py" "$CONFIG" "$CKPT" --data-root "$DATA_ROOT" --work-dir "$WORK_DIR" \
    | tee "$WORK_DIR/test.log"
echo
grep -E 'foreground Jaccard' "$WORK_DIR/test.log" | tail -n 1 | sed 's/.*INFO - /demo result on Kvasir-SEG val: /'

#!/usr/bin/env bash
# The README demo: NAS-LoRA fine-tuning of the pretrained LiteMedSAM on real Kvasir-SEG
# polyps on the CPU (150 iterations at 128x128), next to the decoder-only baseline trained
# on the same budget; both are evaluated on the validation split.
# Usage: tools/demo.sh [DATA_ROOT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${1:-$ROOT/../shared/data/kvasir_seg}"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs/demo}"
CONFIGS="$ROOT/configs/litemedsam"
PY="$ROOT/.venv/bin/python"

if [[ ! -d "$DATA_ROOT/img_dir/train" || ! -d "$DATA_ROOT/ann_dir/val" ]]; then
    cat >&2 <<MSG
demo: no Kvasir-SEG in mmseg layout at $DATA_ROOT (img_dir/{train,val}, ann_dir/{train,val}).
Download kvasir-seg.zip from https://datasets.simula.no/kvasir-seg/, then convert it:
    $PY tools/dataset_converters/kvasir.py kvasir-seg.zip -o data/kvasir_seg --split-file TEST_LIST
and run: make demo DATA_ROOT=data/kvasir_seg
MSG
    exit 1
fi

run() {  # run NAME: train configs/litemedsam/NAME_..., then evaluate its last checkpoint
    local cfg="$CONFIGS/$1_litemedsam_1xb4-150_kvasir-128x128.py" dir="$WORK_DIR/$1"
    "$PY" "$ROOT/tools/train.py" "$cfg" --data-root "$DATA_ROOT" --work-dir "$dir"
    "$PY" "$ROOT/tools/test.py" "$cfg" "$(cat "$dir/last_checkpoint")" --data-root "$DATA_ROOT" \
        --work-dir "$dir" --show-dir "$dir/overlays" 2>&1 | tee "$dir/test.log"
}

run naslora
run decoder-only
echo
echo "Kvasir-SEG val (89 images), LiteMedSAM, 150 iterations of batch 4 at 128x128:"
for name in naslora decoder-only; do
    line="$(grep -E 'foreground Jaccard' "$WORK_DIR/$name/test.log" | tail -n 1)"
    printf '  %-13s %s\n' "$name" "${line#*foreground }"
done
echo "prediction overlays (image with truth | prediction): $WORK_DIR/*/overlays"
echo "alpha plots: $WORK_DIR/naslora/alpha_heatmap.png, alpha_trajectory.png"

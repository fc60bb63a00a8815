#!/usr/bin/env bash
# The README demo: NAS-LoRA fine-tuning of the pretrained LiteMedSAM on real Kvasir-SEG
# polyps on the CPU (150 iterations at 128x128, T_B = 50), next to the decoder-only
# baseline trained on the same budget; both are evaluated on the validation split.
# Usage: [ITERS=150] [WORK_DIR=work_dirs/demo] tools/demo.sh [DATA_ROOT]
# ITERS changes the length of both runs; T_B stays a third of it, the lr warm-up a 15th,
# and the α lr follows the rule of docs/nas_training.md (3 / search steps).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${1:-$ROOT/../shared/data/kvasir_seg}"
WORK_DIR="${WORK_DIR:-$ROOT/work_dirs/demo}"
ITERS="${ITERS:-150}"
CONFIGS="$ROOT/configs/litemedsam"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if [[ ! -d "$DATA_ROOT/img_dir/train" || ! -d "$DATA_ROOT/ann_dir/val" ]]; then
    cat >&2 <<MSG
demo: no Kvasir-SEG in mmseg layout at $DATA_ROOT (img_dir/{train,val}, ann_dir/{train,val}).
Download kvasir-seg.zip from https://datasets.simula.no/kvasir-seg/, then convert it:
    $PY tools/dataset_converters/kvasir.py kvasir-seg.zip -o data/kvasir_seg --split-file TEST_LIST
and run: make demo DATA_ROOT=data/kvasir_seg
MSG
    exit 1
fi
if ! [[ "$ITERS" =~ ^[0-9]+$ ]] || (( ITERS < 3 )); then
    echo "demo: ITERS must be an integer >= 3 (T_B is a third of it), got '$ITERS'." >&2
    exit 1
fi

# The configs' 10 warm-up iterations of 150, also the logging interval.
WARMUP=$(( ITERS / 15 > 0 ? ITERS / 15 : 1 ))
# α can move about lr per search step under Adam: lr = 3 / steps lets it move by 3.
ALPHA_LR=$(awk -v steps=$(( ITERS - ITERS / 3 )) 'BEGIN { printf "%.3g", 3 / steps }')

run() {  # run NAME SCHEDULER_KEY [OPTIONS...]: train NAME_..., then evaluate its last checkpoint
    local name="$1" sched="$2" dir="$WORK_DIR/$1"
    local cfg="$CONFIGS/${name}_litemedsam_1xb4-150_kvasir-128x128.py"
    shift 2
    # --overwrite: the demo always trains from scratch, also on a second `make demo`.
    "$PY" "$ROOT/tools/train.py" "$cfg" --data-root "$DATA_ROOT" --work-dir "$dir" --overwrite \
        --cfg-options train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
        default_hooks.checkpoint.interval="$ITERS" default_hooks.logger.interval="$WARMUP" \
        "$sched.0.end=$WARMUP" "$sched.1.begin=$WARMUP" \
        "$sched.1.end=$ITERS" "$@"
    "$PY" "$ROOT/tools/test.py" "$cfg" "$(cat "$dir/last_checkpoint")" --data-root "$DATA_ROOT" \
        --work-dir "$dir" --show-dir "$dir/overlays" 2>&1 | tee "$dir/test.log"
}

start=$SECONDS
run naslora param_scheduler.weights custom_hooks.0.warmup=$((ITERS / 3)) \
    custom_hooks.1.interval="$WARMUP" optim_wrapper.alpha.optimizer.lr="$ALPHA_LR"
run decoder-only param_scheduler
echo
echo "Kvasir-SEG val, LiteMedSAM, $ITERS iterations of batch 4 at 128x128, $(((SECONDS - start) / 60)) min:"
for name in naslora decoder-only; do
    line="$(grep -E 'foreground .*Jaccard: ' "$WORK_DIR/$name/test.log" | tail -n 1)"
    printf '  %-13s Jaccard: %s\n' "$name" "${line#*Jaccard: }"
done
echo "prediction overlays (image with truth | prediction): $WORK_DIR/*/overlays"
echo "alpha plots: $WORK_DIR/naslora/alpha_heatmap.png, alpha_trajectory.png"

# STARE retinal vessels in mmseg's own STAREDataset layout
# (mmseg::_base_/datasets/stare.py), with SAM's pipeline: images resized to fit
# 1024x1024 (aspect kept) and padded; flips and a small rotation, as SAM2LoRA.
# Labels 0/1. Metrics: Dice (ForegroundIoUMetric) and pixel AUC.
_base_ = 'mmseg::_base_/datasets/stare.py'
crop_size = (1024, 1024)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='RandomRotate', prob=0.5, degree=8, pad_val=0, seg_pad_val=255),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
    dict(type='PackSegInputs'),
]
# mmseg's base wraps the training set in a RepeatDataset.
train_dataloader = dict(num_workers=2, dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(num_workers=2, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    # SAM2LoRA's table: its code averages per-image Dice (0 if empty) and roc_auc_score.
    dict(type='ForegroundIoUMetric', iou_metrics=['mIoU', 'mDice'], convention='sam2lora'),
    dict(type='AUCMetric', convention='sam2lora'),
]
test_evaluator = val_evaluator
# `tools/test.py --tta`: ProbTTAModel averages the probabilities of the
# flipped views (flipped back first). Both flips: these images have no canonical
# orientation. One scale: SAM's ViT runs at the fixed input size of the data
# preprocessor, so other scales would only be padded or not fit.
# Derived from test_pipeline, so both load, resize and check alike: its resize,
# then the flips, then the rest (annotations after the flips stay unflipped).
# tta_model (ProbTTAModel) comes from default_runtime.py.
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal'),
            dict(type='RandomFlip', prob=1., direction='vertical')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]

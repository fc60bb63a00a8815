# SAM2LoRA on DRIVE retinal vessels (mmseg's DRIVEDataset layout, labels 0/1),
# images resized to fit 1024x1024 and padded. Reports Dice and AUC.
_base_ = [
    '../_base_/models/sam2_hiera-l_lora.py', 'mmseg::_base_/datasets/drive.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_20k.py'
]
# Until the package __init__ files export them, import the SAM2 modules here.
custom_imports = dict(
    imports=[
        'mmseg_naslora', 'mmseg_naslora.models.backbones.sam2_hiera',
        'mmseg_naslora.models.decode_heads.sam2_mask_decoder_head',
        'mmseg_naslora.evaluation.metrics.auc_metric'
    ],
    allow_failed_imports=False)
crop_size = (1024, 1024)
# SAM2 sees every test image padded to the square it was trained on.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(data_preprocessor=data_preprocessor)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
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
    dict(type='PackSegInputs'),
]
# --tta at the test scale above (as the dataset base's tta_pipeline, which is built from
# the base's test_pipeline): the plain view, then the flipped ones.
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal'),
            dict(type='RandomFlip', prob=1., direction='vertical')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]
# mmseg's base wraps the training set in a RepeatDataset.
train_dataloader = dict(batch_size=4, dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    # SAM2LoRA's table: its code averages per-image Dice (0 if empty) and roc_auc_score.
    dict(type='ForegroundIoUMetric', iou_metrics=['mIoU', 'mDice'], convention='sam2lora'),
    dict(type='AUCMetric', convention='sam2lora'),
]
test_evaluator = val_evaluator
# The SAM2LoRA reference trains with AdamW, lr 1e-4, weight decay 3e-4.
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=3e-4))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

# NAS-LoRA on SAM ViT-B, Kvasir-SEG at its native 256x256: 2k iterations,
# weights alone for T_B = 500 iterations, then α and weights alternate.
# Runs on the shared data with `--data-root ../shared/data/kvasir_seg`.
_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/kvasir_seg.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_2k.py'
]
crop_size = (256, 256)
data_preprocessor = dict(size=crop_size)
model = dict(
    type='NASEncoderDecoder',
    alpha_interval=1,
    alpha_data='same',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=crop_size[0],
        adapter=dict(type='NASLoRA', rank=3, alpha=32, op_variant='darts')))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.95),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

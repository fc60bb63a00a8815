# LiteMedSAM + LoRA (r=3) on CamVid's 11 classes with SAMed's per-class head (one token and
# one hypernetwork MLP per class, CE + Dice on the K mask logits): a 100-iteration CPU run
# (about one epoch) at 96x128 crops of the images scaled to 96x128 (0.27x of 360x480).
# The multi-class head to prefer with a small CPU budget (val mIoU 24.7 after these 100
# iterations, 23.2 after 50); see docs/datasets.md, "CamVid with LiteMedSAM (multi-class heads)".
_base_ = [
    '../_base_/models/litemedsam_lora.py', '../_base_/datasets/camvid.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_cpu_150.py'
]
crop_size = (96, 128)
test_scale = (128, 96)  # (w, h): CamVid's 480x360 at 0.27x; whole images at test time
max_iters = 100
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=4))
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(
        type='SAMMaskDecoderHead',
        num_classes=11,
        out_channels=11,
        threshold=None,
        mode='per_class',
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
            dict(type='DiceLoss', loss_weight=1.0)
        ]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=test_scale, ratio_range=(1.0, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# --tta at the test scale above (as the dataset base's tta_pipeline, which is built from
# the base's test_pipeline): the plain view, then the horizontal flip
# (photos have an up).
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=10),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=10, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
randomness = dict(seed=0)

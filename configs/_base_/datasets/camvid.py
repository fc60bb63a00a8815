# CamVid, 11 classes (void = 255), SegNet split: train 367 / val 101, 480x360.
dataset_type = 'CamVidDataset'
data_root = 'data/camvid'
crop_size = (352, 480)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
    dict(type='RandomResize', scale=(480, 360), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
# `tools/test.py --tta`: ProbTTAModel averages the probabilities of the
# flipped views (flipped back first). Horizontal flips only: photos have an up.
# One scale: SAM's ViT runs at the fixed input size of the data preprocessor,
# so other scales would only be padded or not fit.
# Derived from test_pipeline, so both load, resize and check alike: its resize,
# then the flips, then the rest (annotations after the flips stay unflipped).
# tta_model (ProbTTAModel) comes from default_runtime.py.
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]

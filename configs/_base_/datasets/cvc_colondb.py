# CVC-ColonDB: a test-only polyp set (380 images). PraNet's protocol: train on
# Kvasir-SEG (900) + CVC-ClinicDB (550) and test on the unseen set. The training
# set is the same in every unseen-set config, so one trained model is tested
# with each of them (tools/test.py CONFIG CHECKPOINT).
dataset_type = 'CVCColonDBDataset'
data_root = 'data/cvc_colondb'
crop_size = (1024, 1024)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
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
    dict(type='CheckSegSample'),  # every sample: EXIF, mask size, channels, values
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            dict(type='KvasirSEGDataset', data_root='data/kvasir',
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline),
            dict(type='CVCClinicDBDataset', data_root='data/cvc_clinicdb',
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline),
        ]))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/test', seg_map_path='ann_dir/test'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    # PraNet's unseen-set protocol: its test script and MATLAB toolbox (8-bit maps, wF beta^2 = 1).
    dict(type='SODMetric', convention='pranet'),  # Smeasure, wFmeasure, meanEmeasure, MAE (x100)
    # Every test image has a polyp, so the empty-image rule of the default never applies.
    dict(type='ForegroundIoUMetric', iou_metrics=['mIoU', 'mDice']),
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

# LiteMedSAM + LoRA (r=3) on Kvasir-SEG at 128x128: a 150-iteration CPU run.
_base_ = [
    '../_base_/models/litemedsam_lora.py', '../_base_/datasets/kvasir_seg.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_cpu_150.py'
]
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(data_preprocessor=data_preprocessor)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(1.0, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.95),
    dict(type='RandomFlip', prob=0.5),
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Kvasir-SEG at 256x256, close to its native resolution (most images are ~600x500).
_base_ = ['./kvasir_seg.py']
crop_size = (256, 256)
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
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

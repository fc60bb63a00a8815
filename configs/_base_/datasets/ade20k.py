# mmseg's ADE20K (mmseg::_base_/datasets/ade20k.py) with a tta_pipeline at its test scale:
# mmseg's own is multi-scale (scale factors 0.5 to 1.75 of the original image), but a SAM
# encoder is built for one input size (test_cfg slides 512x512 windows), and `tools/test.py
# --tta` refuses a tta_pipeline that does not contain the test pipeline's transforms.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# The plain view, then the horizontal flip (photos have an up).
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]

# A CPU-sized SAM2LoRA: a 5-block random-init Hiera (no checkpoint) and a
# 32-wide decoder, on DRIVE at 256x256. It exercises the full SAM2LoRA
# pipeline (encoder and decoder LoRA, composite loss, Dice and AUC) in
# minutes; its scores mean nothing. Run with
#   python tools/train.py CONFIG --data-root ../shared/data/drive
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
crop_size = (256, 256)
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None)),
    backbone=dict(
        arch=dict(_delete_=True, embed_dim=16, num_heads=1, stages=(1, 1, 2, 1),
                  global_att_blocks=(3, ), window_spec=(4, 2, 2, 1),
                  window_pos_embed_bkg_spatial_size=(4, 4)),
        out_channels=32,
        checkpoint=None,
        adapter=dict(rank=4, lora_alpha=8)),
    decode_head=dict(in_channels=32, channels=32, transformer_mlp_dim=64,
                     transformer_num_heads=2, iou_head_hidden_dim=32, checkpoint=None,
                     decoder_adapter=dict(rank=4, lora_alpha=8)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
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
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20)]
train_cfg = dict(max_iters=200, val_interval=100)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))

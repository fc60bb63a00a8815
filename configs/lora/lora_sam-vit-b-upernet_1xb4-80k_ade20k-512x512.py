# SAM ViT-B + LoRA (r = 3) as a plain mmseg backbone under UPerNet, on ADE20K
# with mmseg's own dataset and runtime (via `mmseg::`) and an 80k AdamW schedule.
# SAMViT returns one 256-channel map at 1/16; mmseg's MultiLevelNeck resizes it
# to the 1/4, 1/8, 1/16 and 1/32 pyramid that UPerHead expects (as mmseg's ViT
# UPerNet configs do).
_base_ = [
    '../_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
crop_size = (512, 512)
sam_checkpoint = 'checkpoints/sam_vit_b_01ec64.pth'
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAMViT',
        arch='b',
        img_size=crop_size[0],
        checkpoint=sam_checkpoint,
        adapter=dict(type='LoRA', rank=3, lora_alpha=32)),
    neck=dict(type='MultiLevelNeck', in_channels=[256], out_channels=256, scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=256,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # SAMViT is built for square inputs of img_size: slide 512x512 windows.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))

# NAS-LoRA (r = 3, DARTS cell) in mmseg's frozen ViT-B/16 (AdaptedBackbone) under UPerNet, on
# Kvasir-SEG at 256x256: 2k iterations of batch 4, the weights alone for T_B = 500, then
# α and the weights together (joint step), as configs/naslora/*kvasir-256x256.py.
_base_ = [
    './_base_/vit-b_upernet.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_2k.py'
]
crop_size = (256, 256)
# Test images are padded to the square the backbone is built for (cropped back after).
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
binary_head = dict(num_classes=2, out_channels=1, threshold=0.5)
model = dict(
    type='NASEncoderDecoder',
    alpha_interval=1,
    alpha_data='same',
    search_step='joint',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        backbone=dict(img_size=crop_size),
        adapter=dict(type='NASLoRA', rank=3, lora_alpha=32, op_variant='darts')),
    decode_head=dict(
        **binary_head,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    auxiliary_head=dict(
        **binary_head,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=0.4)),
    test_cfg=dict(_delete_=True, mode='whole'))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

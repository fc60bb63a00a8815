# LoRA (r = 3) in mmseg's frozen BEiT-B (AdaptedBackbone) under UPerNet, on Kvasir-SEG polyps
# at 256x256 (one sigmoid channel): 2k iterations of batch 4, the budget of the
# LiteMedSAM/SAM Kvasir configs. Runs on the shared data with
# `--cfg-options train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=...`.
_base_ = [
    './_base_/beit-b_upernet.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_2k.py'
]
crop_size = (256, 256)
# Test images are padded to the square the backbone is built for (cropped back after).
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
binary_head = dict(num_classes=2, out_channels=1, threshold=0.5)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(backbone=dict(img_size=crop_size)),
    decode_head=dict(
        **binary_head,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    auxiliary_head=dict(
        **binary_head,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=0.4)),
    test_cfg=dict(_delete_=True, mode='whole'))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

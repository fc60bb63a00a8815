# Multi-class SAM decoder (Mask2Former-style set head) with LoRA on CamVid's 11 classes.
_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/camvid.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_20k.py'
]
crop_size = (352, 480)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=480),
    decode_head=dict(
        type='SAMMaskSetHead',
        num_classes=11,
        out_channels=11,
        set_loss=dict(type='MaskSetLoss', loss_cls_weight=2.0, loss_mask_weight=5.0,
                      loss_dice_weight=5.0, no_object_weight=0.1)),
    test_cfg=dict(mode='whole'))
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))

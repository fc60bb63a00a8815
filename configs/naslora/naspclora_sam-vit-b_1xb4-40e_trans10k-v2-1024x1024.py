# NAS-PC-LoRA (r = 3, P = 2/3) on SAM ViT-B, Trans10K v2 (12 classes, set head) at
# 1024x1024: 40 epochs, weights alone for T_B = 10 epochs.
_base_ = [
    '../_base_/models/sam_vit-b_naspclora.py', '../_base_/datasets/trans10k_v2.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_40e.py'
]
crop_size = (1024, 1024)
# SAM sees every test image padded to the square it was trained on.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size[0]),
    # Prompt-free multi-class SAM decoder: one mask token per query, a
    # (K+1)-way classifier and the Mask2Former set loss.
    decode_head=dict(
        type='SAMMaskSetHead',
        num_classes=12,
        out_channels=12,
        set_loss=dict(type='MaskSetLoss', loss_cls_weight=2.0, loss_mask_weight=5.0,
                      loss_dice_weight=5.0, no_object_weight=0.1)))
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))
log_processor = dict(by_epoch=True)

# NAS-LoRA (r = 3, DARTS ops) on SAM ViT-B, COD10K at 1024x1024: 28 epochs, weights
# alone for T_B = 7 epochs.
_base_ = [
    '../_base_/models/sam_vit-b_naslora.py', '../_base_/datasets/cod10k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_28e.py'
]
crop_size = (1024, 1024)
# SAM sees every test image padded to the square it was trained on.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
# Conv-LoRA's code (AutoGluon) trains this benchmark with PraNet's structure loss, its BCE
# term unweighted as that code computes it (docs/conv_lora_and_losses.md).
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size[0]),
    decode_head=dict(loss_decode=dict(_delete_=True, type='StructureLoss', weighted_bce=False)))
default_hooks = dict(checkpoint=dict(save_best='Smeasure', rule='greater'))
log_processor = dict(by_epoch=True)

# LoRA (r = 3) on SAM ViT-B, leaf disease at 1024x1024: 30 epochs.
_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/leaf_disease.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_30e.py'
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
# Conv-LoRA's code trains this set with lr 3e-4.
optim_wrapper = dict(optimizer=dict(lr=3e-4))
default_hooks = dict(checkpoint=dict(save_best='Jaccard', rule='greater'))
log_processor = dict(by_epoch=True)

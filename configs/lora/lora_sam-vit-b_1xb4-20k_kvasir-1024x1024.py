_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/kvasir_seg.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_20k.py'
]
crop_size = (1024, 1024)
# SAM sees every test image padded to the square it was trained on.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(data_preprocessor=data_preprocessor, backbone=dict(img_size=crop_size[0]))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

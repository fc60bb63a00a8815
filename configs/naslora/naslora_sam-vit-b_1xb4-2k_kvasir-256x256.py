# NAS-LoRA on SAM ViT-B, Kvasir-SEG at its native 256x256: 2k iterations,
# weights alone for T_B = 500 iterations, then α and the weights together (joint step).
# Runs on the shared data with `--data-root ../shared/data/kvasir_seg`.
_base_ = [
    '../_base_/models/sam_vit-b_naslora.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_2k.py'
]
crop_size = (256, 256)
# SAM sees every test image padded to the square it was trained on.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(data_preprocessor=data_preprocessor, backbone=dict(img_size=crop_size[0]))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

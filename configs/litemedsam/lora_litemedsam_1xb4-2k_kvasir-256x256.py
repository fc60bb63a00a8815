# LiteMedSAM + LoRA (r=3) on Kvasir-SEG at LiteMedSAM's native 256x256: 2k iterations.
# About 8.5 s per iteration on 2 CPU cores (docs/litemedsam.md), so meant for a GPU or a
# long CPU run; the 128x128 configs next to this one are the CPU variants of `make demo`.
_base_ = [
    '../_base_/models/litemedsam_lora.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_2k.py'
]
crop_size = (256, 256)
# TinyViT runs on the padded square that it was distilled at.
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(data_preprocessor=data_preprocessor)
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

# NAS-LoRA on LiteMedSAM, Kvasir-SEG at 256x256: weights alone for T_B = 500 iterations,
# then α and the weights together (the joint step) until 2k.
_base_ = [
    '../_base_/models/litemedsam_lora.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_2k.py'
]
crop_size = (256, 256)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None))
model = dict(
    type='NASEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(adapter=dict(type='NASLoRA', rank=3, lora_alpha=32, op_variant='darts')))
default_hooks = dict(checkpoint=dict(save_best='Dice', rule='greater'))

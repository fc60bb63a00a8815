# NAS-LoRA (r = 3, DARTS cell) in mmseg's frozen MAE ViT-B (AdaptedBackbone) under UPerNet, on
# ADE20K: 80k iterations of batch 4, the weights alone for T_B = 20k, then α and the
# weights together (joint step). The cell runs on the patch grid; the class token's
# bottleneck is the identity (docs/mmseg_vit.md).
_base_ = [
    './_base_/mae-b_upernet.py', '../_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', './_base_/schedule_nas_80k.py'
]
custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
crop_size = (512, 512)
train_dataloader = dict(batch_size=4)
model = dict(
    type='NASEncoderDecoder',
    alpha_interval=1,
    alpha_data='same',
    search_step='joint',
    backbone=dict(adapter=dict(type='NASLoRA', rank=3, lora_alpha=32, op_variant='darts')))

# LoRA (r = 3) in mmseg's frozen BEiT-B (AdaptedBackbone) under UPerNet, on ADE20K with
# mmseg's own dataset and runtime, 80k iterations of AdamW (batch 4 on one GPU). Only the adapters,
# the neck and the heads train; see docs/mmseg_vit.md for the pretrained file.
_base_ = [
    './_base_/beit-b_upernet.py', '../_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
crop_size = (512, 512)
train_dataloader = dict(batch_size=4)
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))

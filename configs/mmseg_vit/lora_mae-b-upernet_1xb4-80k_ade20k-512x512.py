# LoRA (r = 3) in mmseg's frozen MAE ViT-B (AdaptedBackbone) under UPerNet, on ADE20K with
# mmseg's own dataset, runtime and 80k schedule (batch 4 on one GPU). Only the adapters,
# the neck and the heads train; see docs/mmseg_vit.md for the pretrained file.
_base_ = [
    './_base_/mae-b_upernet.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
crop_size = (512, 512)
train_dataloader = dict(batch_size=4)
# The backbone is frozen: AdamW with the adapters' lr (as the SAM ADE20K configs).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=80000),
]
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))

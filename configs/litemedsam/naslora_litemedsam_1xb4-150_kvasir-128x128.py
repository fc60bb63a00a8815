# NAS-LoRA: weights alone for T_B = 50 iterations, then α and the weights together (the
# joint step) for 100 search steps. α lr 3e-2 by the rule of docs/nas_training.md
# (lr ≈ D / search steps, D = 3), instead of the paper's 1e-3 set for ~15k search steps.
_base_ = ['./lora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(
    type='NASEncoderDecoder',
    search_step='joint',
    backbone=dict(adapter=dict(type='NASLoRA', rank=3, lora_alpha=32, op_variant='darts')))
optim_wrapper = dict(
    _delete_=True,
    constructor='NASOptimWrapperConstructor',
    weights=dict(type='OptimWrapper',
                 optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-4)),
    alpha=dict(type='OptimWrapper',
               optimizer=dict(type='Adam', lr=3e-2, betas=(0.5, 0.999), weight_decay=0.)))
param_scheduler = dict(
    _delete_=True,
    weights=[
        dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=10),
        dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=10, end=150),
    ],
    alpha=[])
custom_hooks = [
    dict(type='NASStageHook', warmup=50, by_epoch=False),
    dict(type='NASAlphaLoggerHook', interval=10),
]
# find_unused_parameters: False for the joint step, True for the alternating one.
model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

# Stage-wise NAS-LoRA optimisation (docs/nas_training.md), 12 epochs: the
# weights train alone for the first T_B = 3 epochs (1/4), then α and the
# weights train together, one joint step per iteration (first-order DARTS).
# For SBU Shadow (Conv-LoRA: 10 epochs).
# The model must be a NASEncoderDecoder (_base_/models/sam_vit-b_naslora.py).
optim_wrapper = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
        clip_grad=None),
    # DARTS's architecture optimiser, lr 1e-3 as in the NAS-LoRA paper (set for its ~15k
    # search steps; docs/nas_training.md gives the rule for shorter runs). No weight decay:
    # softmax(α) is shift-invariant, so decay only pulls the architecture back to uniform.
    alpha=dict(
        type='OptimWrapper',
        optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999), weight_decay=0.)))
param_scheduler = dict(
    weights=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
        dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=True, begin=0, end=12,
             convert_to_iter_based=True),
    ],
    alpha=[])
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# Method configs set checkpoint.save_best to their dataset's metric.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', backend_args=dict(backend='atomic_local'),
                    by_epoch=True, interval=1, max_keep_ckpts=2,
                    save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # Safety hooks (mmseg_naslora/engine/reliability_defaults.py), so stock runners get them.
    work_dir_guard=dict(type='WorkDirGuardHook'),
    startup_check=dict(type='StartupCheckHook', num_samples=8),
    nonfinite_loss=dict(type='NonFiniteLossHook'),
    adapter_checkpoint=dict(type='AdapterCheckpointHook'),
    resume_lr=dict(type='ResumeLrHook'),
)
custom_hooks = [
    dict(type='NASStageHook', warmup=3, by_epoch=True),
    dict(type='NASAlphaLoggerHook', interval=50),
]
# find_unused_parameters: False for the joint step, True for the alternating one.
model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

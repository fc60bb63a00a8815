# Iteration-based stage-wise NAS-LoRA schedule for quick runs: 2k iterations,
# weights alone for the first T_B = 500 iterations, then α and weights together.
optim_wrapper = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
        clip_grad=None),
    # α lr 2e-3 ≈ 3 / 1500 search steps, the rule of docs/nas_training.md (the paper's 1e-3
    # is set for ~15k search steps). No α weight decay: softmax(α) is shift-invariant, so
    # decay only pulls the architecture back to uniform.
    alpha=dict(
        type='OptimWrapper',
        optimizer=dict(type='Adam', lr=2e-3, betas=(0.5, 0.999), weight_decay=0.)))
param_scheduler = dict(
    weights=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
        dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=100, end=2000),
    ],
    alpha=[])
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000, val_interval=250)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# Method configs set checkpoint.save_best to their dataset's metric.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', backend_args=dict(backend='atomic_local'),
                    by_epoch=False, interval=250, max_keep_ckpts=2,
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
    dict(type='NASStageHook', warmup=500, by_epoch=False),
    dict(type='NASAlphaLoggerHook', interval=50),
]
# find_unused_parameters: False for the joint step, True for the alternating one.
model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

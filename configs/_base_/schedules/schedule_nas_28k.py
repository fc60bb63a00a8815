# Iteration-based stage-wise NAS-LoRA schedule for the fundus sets: 28k
# iterations, the weights alone for the first T_B = 7k (1/4), then α and the
# weights train together; the search stage (21k) matches the 20k of the LoRA baselines.
optim_wrapper = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
        clip_grad=None),
    # No α weight decay: softmax(α) is shift-invariant, so decay only pulls the
    # architecture back to uniform (docs/nas_training.md).
    alpha=dict(
        type='OptimWrapper',
        optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999), weight_decay=0.)))
param_scheduler = dict(
    weights=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
        dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=500, end=28000),
    ],
    alpha=[])
train_cfg = dict(type='IterBasedTrainLoop', max_iters=28000, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# Method configs set checkpoint.save_best to their dataset's metric.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', backend_args=dict(backend='atomic_local'),
                    by_epoch=False, interval=2000, max_keep_ckpts=2,
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
    dict(type='NASStageHook', warmup=7000, by_epoch=False),
    dict(type='NASAlphaLoggerHook', interval=50),
]
# find_unused_parameters: False for the joint step, True for the alternating one.
model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

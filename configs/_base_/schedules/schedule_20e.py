# LoRA / Conv-LoRA schedule, 20 epochs: AdamW (lr 1e-4, wd 1e-4), linear
# warm-up then linear decay, validation every 2 epoch(s).
# Conv-LoRA's CAMO and Massachusetts Roads schedule (AutoGluon code).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=20, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# Method configs set checkpoint.save_best to their dataset's metric.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', backend_args=dict(backend='atomic_local'),
                    by_epoch=True, interval=2, max_keep_ckpts=2,
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

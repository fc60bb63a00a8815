custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
tta_model = dict(type='ProbTTAModel')  # mmseg's SegTTAModel mis-merges binary heads
# The safety hooks (start-up data check, non-finite loss stop, adapter file, work-dir
# guard, lr on resume) are in each schedule's default_hooks: mmengine forbids a key that
# two _base_ files define (mmseg_naslora/engine/reliability_defaults.py).

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
tta_model = dict(type='SegTTAModel')
# Reliability hooks (StartupCheckHook, NonFiniteLossHook, AdapterCheckpointHook,
# which writes work_dir/adapters.safetensors) are added to default_hooks by
# tools/train.py and tools/test.py (mmseg_naslora/engine/reliability_defaults.py):
# mmengine forbids a key defined by two _base_ files, and the schedules own
# default_hooks. Turn one off with default_hooks = dict(adapter_checkpoint=None).

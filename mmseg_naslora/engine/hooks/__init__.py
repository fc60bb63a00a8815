from .adapter_checkpoint_hook import AdapterCheckpointHook
from .nas_alpha_logger_hook import NASAlphaLoggerHook
from .nas_stage_hook import NASStageHook
from .nonfinite_loss_hook import NonFiniteLossHook
from .resume_lr_hook import ResumeLrHook
from .startup_check_hook import StartupCheckHook
from .work_dir_guard_hook import WorkDirGuardHook

__all__ = [
    'AdapterCheckpointHook', 'NASAlphaLoggerHook', 'NASStageHook', 'NonFiniteLossHook',
    'ResumeLrHook', 'StartupCheckHook', 'WorkDirGuardHook'
]

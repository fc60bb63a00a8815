from .adapter_checkpoint_hook import AdapterCheckpointHook
from .nas_alpha_logger_hook import NASAlphaLoggerHook
from .nas_stage_hook import NASStageHook
from .nonfinite_loss_hook import NonFiniteLossHook
from .startup_check_hook import StartupCheckHook

__all__ = [
    'AdapterCheckpointHook', 'NASAlphaLoggerHook', 'NASStageHook', 'NonFiniteLossHook',
    'StartupCheckHook'
]

from .conv_lora import ConvLoRA, collect_aux_losses
from .inject import inject_adapters, iter_adapters, merge_adapters, unmerge_adapters
from .lora import LoRA

__all__ = [
    'LoRA', 'ConvLoRA', 'collect_aux_losses', 'inject_adapters', 'iter_adapters',
    'merge_adapters', 'unmerge_adapters'
]

from .arch import ALPHA_MARKER, ArchLayer, arch_layers, arch_parameters, is_arch_name
from .conv_bottleneck_lora import ConvBottleneckLoRA
from .conv_lora import ConvLoRA, collect_aux_losses
from .export import EXPORT_MODES, export_adapters
from .inject import (inject_adapters, iter_adapters, merge_adapters, replace_module,
                     set_valid_size, track_valid_size, unmerge_adapters)
from .lora import BottleneckMap, LoRA
from .nas_lora import NASLoRA, NASPCLoRA
from .ops import (CANDIDATE_OPS, EXTRA_PRIMITIVES, LINEAR_PRIMITIVES, PRIMITIVES, CandidateOp,
                  registered_ops)

__all__ = [
    'LoRA', 'ConvLoRA', 'NASLoRA', 'NASPCLoRA', 'ConvBottleneckLoRA', 'ALPHA_MARKER',
    'ArchLayer', 'arch_layers', 'arch_parameters', 'is_arch_name', 'PRIMITIVES',
    'LINEAR_PRIMITIVES', 'collect_aux_losses', 'export_adapters', 'EXPORT_MODES',
    'inject_adapters', 'iter_adapters', 'merge_adapters', 'unmerge_adapters',
    'replace_module', 'set_valid_size', 'track_valid_size', 'BottleneckMap', 'CANDIDATE_OPS',
    'CandidateOp', 'EXTRA_PRIMITIVES', 'registered_ops'
]

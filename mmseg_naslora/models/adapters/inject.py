"""Put adapters into a model and take them out again.

Adapters replace target ``nn.Linear`` modules in place and keep the original
as ``<name>.base_layer`` (as peft and mmpretrain do), so the frozen weights'
state-dict keys stay predictable: ``blocks.0.attn.qkv.weight`` becomes
``blocks.0.attn.qkv.base_layer.weight``.
"""
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmseg.registry import MODELS

from .lora import LoRA


def check_adapter_blocks(blocks: Optional[Sequence[int]]) -> None:
    """Refuse ``adapter_blocks=[]``, which would adapt nothing; None means all blocks."""
    if blocks is not None and len(blocks) == 0:
        raise ValueError('adapter_blocks=[] is an empty list, so no block would get an '
                         'adapter; list the block indices to adapt, e.g. [0, 1, 2, 3], '
                         'or use adapter_blocks=None for all blocks.')


def inject_adapters(model: nn.Module,
                    adapter_cfg: dict,
                    target: str = r'(^|\.)qkv$',
                    blocks: Optional[Sequence[int]] = None,
                    block_pattern: str = r'(?:^|\.)blocks\.(\d+)\.') -> List[str]:
    """Replace every ``nn.Linear`` whose name matches ``target`` by an adapter.

    Args:
        model (nn.Module): Model to modify in place.
        adapter_cfg (dict): Registry config of the adapter, e.g.
            ``dict(type='LoRA', rank=3, lora_alpha=32)``; ``base_layer`` is filled in.
        target (str): Regular expression searched in each module name.
        blocks (Sequence[int], optional): Only adapt modules inside these block
            indices (read from the name with ``block_pattern``). None adapts all.
        block_pattern (str): Regular expression whose first group is the block
            index of a module name.

    Returns:
        list[str]: Names of the adapted modules, in model order.
    """
    if 'type' not in adapter_cfg:
        raise KeyError(f'adapter config {adapter_cfg} has no `type`; use e.g. '
                       "dict(type='LoRA', rank=3, lora_alpha=32).")
    candidates = [(name, module) for name, module in model.named_modules()
                  if re.search(target, name) and isinstance(module, nn.Linear)]
    if blocks is not None:
        check_adapter_blocks(blocks)
        wanted = {int(b) for b in blocks}
        found = {_block_index(name, block_pattern) for name, _ in candidates}
        unknown = wanted - found
        if unknown:
            raise ValueError(f'adapter_blocks {sorted(unknown)} do not exist; the '
                             f'model has blocks {sorted(found - {None})}.')
        candidates = [(n, m) for n, m in candidates
                      if _block_index(n, block_pattern) in wanted]
    if not candidates:
        raise ValueError(f'no nn.Linear in {type(model).__name__} matches '
                         f'target {target!r}; nothing to adapt.')
    adapters = []
    for name, linear in candidates:
        adapters.append(MODELS.build(dict(adapter_cfg, base_layer=linear)))
        replace_module(model, name, adapters[-1])
    type(adapters[0]).after_inject(adapters)
    return [name for name, _ in candidates]


def iter_adapters(model: nn.Module) -> Iterator[Tuple[str, LoRA]]:
    """Yield ``(name, adapter)`` for every adapter in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRA):
            yield name, module


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of ``model``'s submodule ``name``."""
    if not name:
        raise ValueError('replace_module needs the name of a submodule, not the '
                         'model itself.')
    parent_name, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def set_valid_size(module: nn.Module, size: Tuple[int, int]) -> None:
    """Tell every adapter inside ``module`` the unpadded size of the map it tiles."""
    for _, adapter in iter_adapters(module):
        adapter.valid_size = (int(size[0]), int(size[1]))


def track_valid_size(blocks: Sequence[nn.Module]) -> None:
    """Keep :func:`set_valid_size` current for blocks that take ``(B, H, W, C)`` maps.

    SAM's and SAM 2's blocks pad their input up to whole windows; a
    pre-forward hook records the unpadded ``(H, W)`` on each call, so it also
    holds inside an activation checkpoint's recomputation.
    """
    for block in blocks:
        if any(True for _ in iter_adapters(block)):
            block.register_forward_pre_hook(_record_valid_size)


def _record_valid_size(block: nn.Module, args: tuple) -> None:
    set_valid_size(block, args[0].shape[1:3])


def merge_adapters(model: nn.Module) -> int:
    """Fold every mergeable adapter into its base layer; returns how many."""
    merged = [a for _, a in iter_adapters(model) if a.mergeable]
    for adapter in merged:
        adapter.merge()
    return len(merged)


def unmerge_adapters(model: nn.Module) -> None:
    for _, adapter in iter_adapters(model):
        adapter.unmerge()


def unwrapped_state_keys(model: nn.Module) -> Dict[str, str]:
    """Map each frozen parameter's pre-injection key to its current key.

    Adapter-owned tensors are left out, so the result describes exactly what
    an un-adapted checkpoint must provide.
    """
    adapter_prefixes = tuple(f'{n}.' for n, _ in iter_adapters(model))
    keys = {}
    for key in model.state_dict():
        if key.startswith(adapter_prefixes):
            head, _, tail = key.rpartition('.base_layer.')
            if not head:
                continue
            keys[f'{head}.{tail}'] = key
        else:
            keys[key] = key
    return keys


def _block_index(name: str, pattern: str) -> Optional[int]:
    match = re.search(pattern, name)
    return int(match.group(1)) if match else None


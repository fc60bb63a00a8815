"""Turn trained adapters into their inference form ("no re-training").

Three modes; ``fold`` and ``collapse`` reproduce the eval-mode model exactly,
``topk`` approximates it:

``fold``
    Every adapter must be token-wise linear (a :attr:`LoRA.mergeable` LoRA,
    or a ``token_wise`` NAS cell or 1x1 :class:`ConvBottleneckLoRA`);
    ``s·B·M·A`` is added to ``W0`` and the adapter is replaced by its base
    ``nn.Linear``. The state dict then has the keys of an un-adapted model
    (``qkv.base_layer.weight`` -> ``qkv.weight``) and the backbone config
    takes ``adapter=None``.
``collapse``
    Every NAS-LoRA cell whose ops are all linear becomes one convolution
    (:meth:`NASLoRA.collapse`, a :class:`ConvBottleneckLoRA`).
``topk``
    Every NAS-LoRA cell keeps its k most weighted ops
    (:meth:`NASLoRA.prune_topk`); the config records them per layer.

:func:`export_adapters` does the conversion in place and returns the adapter
config that rebuilds the converted model; ``tools/export.py`` is its CLI.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .inject import iter_adapters
from .lora import LoRA
from .nas_lora import ConvBottleneckLoRA, NASLoRA
from .ops import PRIMITIVES, pad_kernel

EXPORT_MODES = ('fold', 'collapse', 'topk')


def export_adapters(model: nn.Module, mode: str,
                    topk: Optional[int] = None) -> Optional[dict]:
    """Convert every adapter inside ``model`` in place.

    Args:
        model (nn.Module): Module holding the adapters (e.g. a SAMViT
            backbone). Put it in eval mode to compare outputs afterwards.
        mode (str): ``'fold'``, ``'collapse'`` or ``'topk'``.
        topk (int, optional): Ops to keep per cell; required for ``'topk'``.

    Returns:
        dict | None: The adapter config that builds the converted model
        (``None`` for ``'fold'``: no adapter is left).
    """
    if mode not in EXPORT_MODES:
        raise ValueError(f'export mode must be one of {list(EXPORT_MODES)}, '
                         f'got {mode!r}.')
    if mode == 'topk' and topk is None:
        raise ValueError("export mode 'topk' needs topk=K (--topk K).")
    adapters = list(iter_adapters(model))
    if not adapters:
        raise ValueError(f'{type(model).__name__} holds no adapter; there is '
                         'nothing to export.')
    common = _common_args(adapters)
    if mode == 'fold':
        return _fold(model, adapters)
    if mode == 'collapse':
        return _collapse(model, adapters, common)
    return _topk(model, adapters, common, topk)


def _fold(model: nn.Module, adapters: List[Tuple[str, LoRA]]) -> None:
    refused = [f'{name} ({type(a).__name__})' for name, a in adapters
               if not (a.mergeable or getattr(a, 'token_wise', False))]
    if refused:
        raise ValueError(
            f'--mode fold needs token-wise adapters, but {refused[:3]}'
            f'{" ..." if len(refused) > 3 else ""} mix neighbouring tokens; '
            'use --mode collapse (linear NAS cells) or --mode topk.')
    for name, adapter in adapters:
        if adapter.mergeable:
            adapter.merge()
        else:  # a 1x1 cell: LoRA.merge refuses any non-identity bottleneck
            weight = adapter.base_layer.weight
            with torch.no_grad():
                weight.copy_((weight.float() + adapter.delta_weight().to(
                    weight.device)).to(weight.dtype))
        _replace(model, name, adapter.base_layer)
    return None


def _collapse(model: nn.Module, adapters: List[Tuple[str, LoRA]],
              common: dict) -> dict:
    refused = [f'{name} ({type(a).__name__})' for name, a in adapters
               if not isinstance(a, (NASLoRA, ConvBottleneckLoRA))
               or (isinstance(a, NASLoRA) and not a.collapsible)]
    if refused:
        raise ValueError(
            f'--mode collapse needs NAS-LoRA cells of linear ops, but '
            f'{refused[:3]}{" ..." if len(refused) > 3 else ""} are not; '
            "train with op_variant='linear' and no 'max_pool_3x3' to "
            'collapse, fold plain LoRA with --mode fold, or use --mode topk.')
    converted = [(name, a.collapse() if isinstance(a, NASLoRA) else a)
                 for name, a in adapters]
    # One config builds every layer, so all kernels take the largest size.
    size = max(a.kernel_size for _, a in converted)
    for name, adapter in converted:
        if adapter.kernel_size != size:
            adapter = _widen(adapter, size)
        _replace(model, name, adapter)
    return dict(type='ConvBottleneckLoRA', **common, kernel_size=size)


def _topk(model: nn.Module, adapters: List[Tuple[str, LoRA]], common: dict,
          topk: int) -> dict:
    refused = [name for name, a in adapters if not isinstance(a, NASLoRA)]
    if refused:
        raise ValueError(f'--mode topk applies to NAS-LoRA cells only, but '
                         f'{refused[:3]} are not; use --mode fold for LoRA.')
    first = adapters[0][1]
    settings = dict(op_variant=first.op_variant, residual=first.residual,
                    pc_ratio=first.pc_ratio,
                    pc_channel_choice=first.pc_channel_choice,
                    fused=first.fused)
    for name, adapter in adapters:
        mine = dict(op_variant=adapter.op_variant, residual=adapter.residual,
                    pc_ratio=adapter.pc_ratio,
                    pc_channel_choice=adapter.pc_channel_choice,
                    fused=adapter.fused)
        if mine != settings:
            raise ValueError(f'{name} has NASLoRA settings {mine}, unlike '
                             f'{settings}; one adapter config cannot '
                             'describe both.')
    kept = []
    for name, adapter in adapters:
        pruned = adapter.prune_topk(topk)
        _replace(model, name, pruned)
        kept.append(pruned.primitives)
    primitives = [p for p in PRIMITIVES if any(p in k for k in kept)]
    return dict(type='NASLoRA', **common, primitives=primitives, **settings,
                share_alpha=False, layer_primitives=kept)


def _common_args(adapters: List[Tuple[str, LoRA]]) -> dict:
    """rank/alpha/dropout shared by all adapters (one config builds them)."""
    found = {}
    for name, adapter in adapters:
        dropout = adapter.dropout.p if isinstance(adapter.dropout,
                                                  nn.Dropout) else 0.
        args = dict(rank=adapter.rank, alpha=adapter.scaling * adapter.rank,
                    dropout=dropout)
        if found and args != found:
            raise ValueError(f'adapter {name} has {args}, unlike {found} of '
                             'the others; one adapter config cannot '
                             'describe both.')
        found = args
    return found


def _widen(adapter: ConvBottleneckLoRA, size: int) -> ConvBottleneckLoRA:
    wide = ConvBottleneckLoRA(adapter.base_layer, rank=adapter.rank,
                              kernel_size=size)
    wide.scaling = adapter.scaling
    wide.dropout = adapter.dropout
    wide.grid_size = adapter.grid_size
    wide.lora_A, wide.lora_B = adapter.lora_A, adapter.lora_B
    wide.conv.weight.data = pad_kernel(adapter.conv.weight.data, size)
    return wide.to(adapter.lora_A.weight.device).train(adapter.training)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise ValueError('export_adapters needs the module that contains the '
                         'adapters, not an adapter itself.')
    parent_name, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)

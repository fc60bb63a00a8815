"""Turn trained adapters into their inference form ("no re-training").

Three modes, all read off :meth:`LoRA.bottleneck_map` (the bottleneck as a
linear map in eval mode, if it is one); ``fold`` and ``collapse`` reproduce
the eval-mode model exactly, ``topk`` approximates it:

``fold``
    Every adapter must be :attr:`LoRA.mergeable` (a token-wise map
    ``M·z + b``): ``s·B·M·A`` is added to ``W0`` and ``s·B·b`` to its bias,
    and the adapter is replaced by its base ``nn.Linear``. The state dict
    then has the keys of an un-adapted model (``qkv.base_layer.weight`` ->
    ``qkv.weight``), the backbone config takes ``adapter=None``, and the
    model costs exactly what the frozen one does.
``collapse``
    Every adapter with a linear bottleneck (NAS-LoRA cells of
    ``op_variant='linear_bn'``/``'linear'`` without max-pool, LoRA,
    :class:`ConvBottleneckLoRA`) becomes one :class:`ConvBottleneckLoRA`
    (:meth:`ConvBottleneckLoRA.from_adapter`): ``A``, one ``r x r`` conv
    with a bias, ``B``. A spatial cell mixes tokens and cannot enter ``W0``.
``topk``
    Every NAS-LoRA cell keeps its k most weighted real ops at their trained
    weights (:meth:`NASLoRA.prune_topk`); the config records them per layer.

:func:`export_adapters` does the conversion in place and returns the adapter
config that rebuilds the converted model; ``tools/export.py`` is its CLI.
"""
from typing import List, Optional, Tuple

import torch.nn as nn

from .conv_bottleneck_lora import ConvBottleneckLoRA
from .inject import iter_adapters, replace_module
from .lora import LoRA
from .nas_lora import NASLoRA

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
    if any(not name for name, _ in adapters):
        raise ValueError('export_adapters needs the module that contains the '
                         'adapters, not an adapter itself.')
    common = _common_args(adapters)
    if mode == 'fold':
        return _fold(model, adapters)
    if mode == 'collapse':
        return _collapse(model, adapters, common)
    return _topk(model, adapters, common, topk)


def _fold(model: nn.Module, adapters: List[Tuple[str, LoRA]]) -> None:
    refused = [f'{name} ({type(a).__name__}: {a._merge_refusal()})'
               for name, a in adapters if not a.mergeable]
    if refused:
        raise ValueError(
            f'--mode fold needs token-wise adapters, but {_first(refused)}; '
            'use --mode collapse (linear cells) or --mode topk.')
    for name, adapter in adapters:
        adapter.merge()
        replace_module(model, name, adapter.base_layer)
    return None


def _collapse(model: nn.Module, adapters: List[Tuple[str, LoRA]],
              common: dict) -> dict:
    refused = [f'{name} ({_why_not_linear(a)})' for name, a in adapters
               if a.bottleneck_map() is None]
    if refused:
        raise ValueError(
            f'--mode collapse needs linear bottlenecks, but {_first(refused)}; '
            "train NAS-LoRA with op_variant='linear_bn' and without "
            "'max_pool_3x3' to collapse, or export with --mode topk.")
    maps = [a.bottleneck_map() for _, a in adapters]
    # One config builds every layer: one kernel size, one bias flag, one masking.
    size = max(m.kernel_size for m in maps)
    masking = {a.spatial and a.mask_padding for _, a in adapters}
    if len(masking) > 1:
        raise ValueError('--mode collapse: some adapters mask window padding and '
                         'others do not; one adapter config cannot describe both.')
    bias = any(m.bias is not None for m in maps)
    for name, adapter in adapters:
        replace_module(model, name, ConvBottleneckLoRA.from_adapter(adapter, size, bias))
    return dict(type='ConvBottleneckLoRA', **common, kernel_size=size, bias=bias,
                mask_padding=masking.pop())


def _topk(model: nn.Module, adapters: List[Tuple[str, LoRA]], common: dict,
          topk: int) -> dict:
    refused = [name for name, a in adapters if not isinstance(a, NASLoRA)]
    if refused:
        raise ValueError(f'--mode topk applies to NAS-LoRA cells only, but '
                         f'{_first(refused)} are not; use --mode fold for LoRA.')
    keys = ('op_variant', 'residual', 'pc_ratio', 'pc_channel_choice', 'fused',
            'mask_padding')
    settings = {k: getattr(adapters[0][1], k) for k in keys}
    for name, adapter in adapters:
        mine = {k: getattr(adapter, k) for k in keys}
        if mine != settings:
            raise ValueError(f'{name} has NASLoRA settings {mine}, unlike '
                             f'{settings}; one adapter config cannot '
                             'describe both.')
    kept = []
    for name, adapter in adapters:
        pruned = adapter.prune_topk(topk)
        replace_module(model, name, pruned)
        kept.append(pruned.primitives)
    # Every kept op, in the order the layers list their candidates.
    primitives = list(dict.fromkeys(p for _, a in adapters for p in a.primitives
                                    if any(p in k for k in kept)))
    return dict(type='NASLoRA', **common, primitives=primitives, **settings,
                share_alpha=False, layer_primitives=kept)


def _common_args(adapters: List[Tuple[str, LoRA]]) -> dict:
    """rank/lora_alpha/dropout shared by all adapters (one config builds them)."""
    found = {}
    for name, adapter in adapters:
        args = dict(rank=adapter.rank, lora_alpha=adapter.scaling * adapter.rank,
                    dropout=getattr(adapter.dropout, 'p', 0.))
        if found and args != found:
            raise ValueError(f'adapter {name} has {args}, unlike {found} of '
                             'the others; one adapter config cannot '
                             'describe both.')
        found = args
    return found


def _why_not_linear(adapter: LoRA) -> str:
    if isinstance(adapter, NASLoRA):
        return (f'op_variant={adapter.op_variant!r}, not affine: '
                f'{adapter.nonlinear_primitives()}')
    return f'{type(adapter).__name__} is not linear'


def _first(items: List[str], count: int = 3) -> str:
    more = f' and {len(items) - count} more' if len(items) > count else ''
    return ', '.join(items[:count]) + more

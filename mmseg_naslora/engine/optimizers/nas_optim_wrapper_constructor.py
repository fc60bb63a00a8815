"""Two optimisers for differentiable architecture search: weights and α.

The stage-wise NAS-LoRA optimisation (METHODS.md §5) steps α and the weights,
each with its own optimiser, as DARTS does (Liu et al., "DARTS:
Differentiable Architecture Search", ICLR 2019). This constructor builds them
as an :class:`~mmengine.optim.OptimWrapperDict` with the keys ``weights`` and
``alpha``. The idea is mmrazor's ``SeparateOptimWrapperConstructor`` (one
sub-config per parameter set); the parameter groups are built by mmengine's
:class:`~mmengine.optim.DefaultOptimWrapperConstructor`, so ``paramwise_cfg``
(``custom_keys``, ``lr_mult``, ``decay_mult``, ``norm_decay_mult``...) works
unchanged for either set.
"""
import contextlib
import copy
import inspect
import logging
from typing import Dict, Iterator, List, Optional, Set, Union

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor,
                            OptimWrapper, OptimWrapperDict)
from mmseg.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                            OPTIMIZERS)

from ...models.adapters.arch import ALPHA_MARKER, is_arch_name

#: The sub-configs this constructor understands.
WRAPPER_KEYS = ('weights', 'alpha')

_ALPHA_EXAMPLE = ("alpha=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3, "
                  'betas=(0.5, 0.999), weight_decay=0))')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class NASOptimWrapperConstructor:
    """Build ``OptimWrapperDict(weights=..., alpha=...)`` for a NAS model.

    Architecture parameters are found by name: every trainable parameter
    whose name ends with :data:`~mmseg_naslora.models.adapters.arch.ALPHA_MARKER`
    goes to the ``alpha`` wrapper, every other trainable parameter to the
    ``weights`` wrapper. Frozen parameters (``requires_grad=False``) are in
    neither and are skipped quietly: one summary line is logged instead of
    mmengine's warning per frozen tensor (a frozen SAM ViT-H has hundreds).

    A model without trainable α gets a plain :class:`OptimWrapper` built from
    the ``weights`` entry, so one ``optim_wrapper`` config serves NAS-LoRA,
    LoRA and Conv-LoRA models, and stock segmentors. Note that a ``dict``
    ``param_scheduler`` (``dict(weights=[...], alpha=[...])``) needs the
    ``OptimWrapperDict``; configs shared with α-free models should give a
    list (it is applied to every wrapper).

    Each entry is an ordinary optim-wrapper config and may hold its own
    ``paramwise_cfg``. Other top-level keys (``type``, ``loss_scale``,
    ``clip_grad``..., e.g. what ``tools/train.py --amp`` sets) apply to both
    entries and take precedence over theirs. When both wrappers are
    ``AmpOptimWrapper`` s, the α wrapper uses the weights wrapper's loss
    scaler: the joint search step scales one backward for both optimisers.
    Groups with identical options are merged, so an optimiser has as many
    groups as distinct option sets, not one per tensor. Parameters shared
    between modules are added once.

    α takes no weight decay (``weight_decay=0``; give it explicitly, since
    Adam's default is also 0 but AdamW's is not): softmax(α) does not change
    when all of a layer's α move together, so decay only pulls the
    architecture back to uniform, and coupled L2 caps ``|α|`` at
    ``|E[∂L/∂α]| / weight_decay`` however long the search runs. The α
    learning rate sets how far α can move: Adam moves each entry by at most
    about lr per step, see ``docs/nas_training.md`` for the rule.

    Example::

        optim_wrapper = dict(
            constructor='NASOptimWrapperConstructor',
            weights=dict(
                type='OptimWrapper',
                optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
                paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.)})),
            alpha=dict(
                type='OptimWrapper',
                optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999),
                               weight_decay=0)))

    Args:
        optim_wrapper_cfg (dict): ``dict(weights=..., alpha=...)``; ``alpha``
            may be omitted only for models without α. Other keys are wrapper
            options for both.
        paramwise_cfg (dict, optional): Not supported at the top level (it
            would be ambiguous); put it inside ``weights`` or ``alpha``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        if not isinstance(optim_wrapper_cfg, dict):
            raise TypeError(f'optim_wrapper must be a dict, got {type(optim_wrapper_cfg)}.')
        if paramwise_cfg is not None:
            raise ValueError(
                'NASOptimWrapperConstructor: move optim_wrapper.paramwise_cfg into '
                'optim_wrapper.weights (or optim_wrapper.alpha); each wrapper has its own.')
        if 'weights' not in optim_wrapper_cfg or 'optimizer' in optim_wrapper_cfg:
            raise KeyError(
                "NASOptimWrapperConstructor expects optim_wrapper=dict(constructor="
                "'NASOptimWrapperConstructor', weights=dict(optimizer=...), "
                f"alpha=dict(optimizer=...)); got keys {sorted(optim_wrapper_cfg)}"
                + (" (move 'optimizer' into 'weights')" if 'optimizer' in optim_wrapper_cfg
                   else " (missing: 'weights')") + '.')
        for key in WRAPPER_KEYS:
            sub = optim_wrapper_cfg.get(key)
            if sub is not None and (not isinstance(sub, dict) or 'optimizer' not in sub):
                raise KeyError(f'optim_wrapper.{key} must be an optim-wrapper config with an '
                               f"'optimizer' entry, got {sub!r}.")
        # Other top-level keys apply to both wrappers and win over theirs, so
        # that `tools/train.py --amp` (type='AmpOptimWrapper', loss_scale=...)
        # switches both, whatever type the entries name.
        shared = {k: v for k, v in optim_wrapper_cfg.items() if k not in WRAPPER_KEYS}
        self.weights_cfg = dict(copy.deepcopy(optim_wrapper_cfg['weights']), **shared)
        alpha = optim_wrapper_cfg.get('alpha')
        self.alpha_cfg = None if alpha is None else dict(copy.deepcopy(alpha), **shared)

    def __call__(self, model: nn.Module) -> Union[OptimWrapper, OptimWrapperDict]:
        if hasattr(model, 'module'):
            model = model.module
        alpha_ids: Set[int] = set()
        weight_ids: Set[int] = set()
        frozen_ids: Set[int] = set()
        sizes: Dict[int, int] = {}
        for name, param in model.named_parameters():
            sizes[id(param)] = param.numel()
            if not param.requires_grad:
                frozen_ids.add(id(param))
            elif is_arch_name(name):
                alpha_ids.add(id(param))
            else:
                weight_ids.add(id(param))
        if not weight_ids:
            raise ValueError(
                f'{type(model).__name__} has no trainable weights besides α; check the '
                'adapter config (every parameter has requires_grad=False).')
        weights = self._build(self.weights_cfg, model, weight_ids, 'weights')

        def count(ids: Set[int]) -> str:
            return f'{len(ids)} tensors ({sum(sizes[i] for i in ids):,} params)'

        summary = (f'NASOptimWrapperConstructor: weights {count(weight_ids)} in '
                   f'{len(weights.optimizer.param_groups)} group(s)')
        if not alpha_ids:
            print_log(f'{summary}; no architecture parameters (*{ALPHA_MARKER}), so a plain '
                      f'{type(weights).__name__} is used; {count(frozen_ids)} frozen, '
                      'skipped.', logger='current')
            return weights
        if self.alpha_cfg is None:
            raise KeyError(
                f'the model has {len(alpha_ids)} architecture parameters (*{ALPHA_MARKER}) '
                'but optim_wrapper has no `alpha` entry; add e.g. optim_wrapper.'
                f'{_ALPHA_EXAMPLE}.')
        alpha = self._build(self.alpha_cfg, model, alpha_ids, 'alpha')
        if isinstance(alpha, AmpOptimWrapper) and isinstance(weights, AmpOptimWrapper):
            alpha.loss_scaler = weights.loss_scaler
        elif isinstance(alpha, AmpOptimWrapper) != isinstance(weights, AmpOptimWrapper):
            raise TypeError(
                'optim_wrapper.weights and optim_wrapper.alpha must both be AmpOptimWrapper or '
                f'neither, got {type(weights).__name__} and {type(alpha).__name__}; set '
                "type='AmpOptimWrapper' at the top level of optim_wrapper to switch both.")
        print_log(f'{summary}; alpha {count(alpha_ids)}; {count(frozen_ids)} frozen, skipped.',
                  logger='current')
        return OptimWrapperDict(weights=weights, alpha=alpha)

    @staticmethod
    def _build(wrapper_cfg: dict, model: nn.Module, keep: Set[int], key: str) -> OptimWrapper:
        """One optim wrapper over the parameters ``keep`` (ids) of ``model``."""
        wrapper_cfg = copy.deepcopy(wrapper_cfg)
        paramwise_cfg = wrapper_cfg.pop('paramwise_cfg', None)
        builder = _SelectiveConstructor(wrapper_cfg, paramwise_cfg, keep)
        groups: List[dict] = []
        with _quiet_frozen_skips():
            builder.add_params(groups, model)
        groups = _merge_groups(groups)
        optimizer_cfg = copy.deepcopy(builder.optimizer_cfg)
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            optimizer_cls = OPTIMIZERS.get(optimizer_cls)
            if optimizer_cls is None:
                raise KeyError(f'optim_wrapper.{key}.optimizer.type '
                               f'{optimizer_cfg["type"]!r} is not a registered optimizer.')
        # As mmengine does: some optimizers name their first argument
        # `model_params` rather than `params`.
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg[first_arg] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = builder.optim_wrapper_cfg
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))


class _SelectiveConstructor(DefaultOptimWrapperConstructor):
    """mmengine's param-wise grouping restricted to a set of parameters."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict],
                 keep: Set[int]) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.keep = keep

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        # Whole frozen (or other-set) sub-trees are pruned before mmengine
        # walks them; the rest is filtered after it has applied its rules.
        if not any(id(p) in self.keep for p in module.parameters()):
            return
        start = len(params)
        super().add_params(params, module, prefix=prefix, is_dcn_module=is_dcn_module)
        params[start:] = [g for g in params[start:]
                          if all(id(p) in self.keep for p in g['params'])]


def _merge_groups(groups: List[dict]) -> List[dict]:
    """Merge groups with identical options (first-seen order), dropping repeats."""
    merged: Dict[tuple, dict] = {}
    seen: Set[int] = set()
    for group in groups:
        fresh = [p for p in group['params'] if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if not fresh:
            continue
        options = {k: v for k, v in group.items() if k != 'params'}
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in merged:
            merged[key] = dict(options, params=[])
        merged[key]['params'].extend(fresh)
    return list(merged.values())


class _DropFrozenSkips(logging.Filter):
    """Drops mmengine's "X is skipped since its requires_grad=False" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith('is skipped since its requires_grad=False')


@contextlib.contextmanager
def _quiet_frozen_skips() -> Iterator[None]:
    logger = MMLogger.get_current_instance()
    flt = _DropFrozenSkips()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)

"""Refuse a resume whose optimizer state does not fit the config's model, and say why.

mmengine's ``Runner.resume`` loads the checkpoint's optimizer state into an
optimizer built from the *config's* model. When the set of parameters
changed in between (another ``adapter_blocks``, an adapter on more or fewer
layers, a part of SAM frozen or unfrozen), torch fails with ``loaded state
dict contains a parameter group that doesn't match the size of optimizer's
group``, or, when the counts happen to agree, silently pairs AdamW moments
with the wrong tensors. :func:`check_resume_fits` runs before that load
(``ResumeLrHook.after_load_checkpoint``) and names the parameters that
differ. :func:`optimizer_param_names` is what ``ResumeLrHook`` stamps into
every checkpoint's ``meta`` so the comparison is by name, not by count.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.optim import OptimWrapperDict

from ..utils.model import unwrap_model

#: ``checkpoint['meta']`` key: ``{wrapper name ('' for a single one): [names of group i]}``.
META_KEY = 'optimizer_param_names'
_SHOW = 8


class ResumeMismatchError(ValueError):
    """The checkpoint's optimizer state was saved for other trainable parameters."""


def _wrappers(optim_wrapper) -> List[Tuple[str, object]]:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.optim_wrappers.items())
    if hasattr(optim_wrapper, 'optimizer'):
        return [('', optim_wrapper)]
    return []  # not built (a runner without training)


def optimizer_param_names(model: nn.Module, optim_wrapper) -> Dict[str, List[List[str]]]:
    """Parameter names of every param group of every optimizer, in optimizer order.

    Args:
        model (nn.Module): The runner's model (a DDP wrapper is unwrapped).
        optim_wrapper: An ``OptimWrapper`` or ``OptimWrapperDict``.

    Returns:
        dict[str, list[list[str]]]: ``{wrapper name: [group 0 names, ...]}``,
        ``''`` naming a single wrapper; a tensor the model does not own is
        ``'?'``.
    """
    names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    return {key: [[names.get(id(p), '?') for p in group['params']]
                   for group in wrapper.optimizer.param_groups]
            for key, wrapper in _wrappers(optim_wrapper)}


def _shown(names: Sequence[str]) -> str:
    names = sorted(names)
    more = f', ... ({len(names)} in all)' if len(names) > _SHOW else ''
    return ', '.join(names[:_SHOW]) + more


def _count_problems(key: str, fresh: List[List[str]], saved: Optional[dict]) -> List[str]:
    """Group-count/size/shape differences of one optimizer (checkpoints without names)."""
    where = f"optimizer '{key}'" if key else 'the optimizer'
    if not isinstance(saved, dict) or 'param_groups' not in saved:
        return [f'{where}: the checkpoint has no state for it']
    groups = saved['param_groups']
    if len(groups) != len(fresh):
        return [f'{where}: {len(groups)} param groups in the checkpoint, {len(fresh)} in '
                'the config']
    return [f'{where}, group {i}: {len(g["params"])} parameters in the checkpoint, '
            f'{len(f)} in the config' for i, (g, f) in enumerate(zip(groups, fresh))
            if len(g['params']) != len(f)]


def check_resume_fits(runner, checkpoint: dict, source: Optional[str] = None) -> None:
    """Raise :class:`ResumeMismatchError` if ``checkpoint`` cannot resume ``runner``.

    Compares, per optimizer and param group, the parameter names stamped in
    ``checkpoint['meta']`` (:data:`META_KEY`) with those of the runner's
    optimizer; for checkpoints without the stamp, the group counts and sizes.
    The message lists the parameter names that differ between the
    checkpoint's model (its ``state_dict`` keys and stamped names) and the
    config's model, and the two fixes.

    Args:
        runner: The resuming runner (its ``optim_wrapper`` built).
        checkpoint (dict): The loaded checkpoint, before mmengine loads its
            optimizer state.
        source (str, optional): The checkpoint's path, for the message.
    """
    if 'optimizer' not in checkpoint:
        return
    wrappers = _wrappers(getattr(runner, 'optim_wrapper', None))
    if not wrappers:
        return
    fresh = optimizer_param_names(runner.model, runner.optim_wrapper)
    stamped = (checkpoint.get('meta') or {}).get(META_KEY)
    saved_opt = checkpoint['optimizer']
    problems: List[str] = []
    only_ckpt, only_cfg = set(), set()
    for key, _ in wrappers:
        saved = saved_opt.get(key) if key else saved_opt
        if isinstance(stamped, dict) and key in stamped:
            old = [list(g) for g in stamped[key]]
            if old != fresh[key]:
                where = f"optimizer '{key}'" if key else 'the optimizer'
                old_set = {n for g in old for n in g}
                new_set = {n for g in fresh[key] for n in g}
                only_ckpt |= old_set - new_set
                only_cfg |= new_set - old_set
                problems.append(f'{where}: {len(old_set)} parameters in the checkpoint, '
                                f'{len(new_set)} in the config' if old_set != new_set else
                                f'{where}: the same parameters, grouped differently '
                                '(another paramwise_cfg?)')
        else:
            problems += _count_problems(key, fresh[key], saved)
    if not problems:
        return
    # The model's own keys tell a changed adapter_blocks apart from a changed freeze.
    state = checkpoint.get('state_dict') or {}
    own = set(unwrap_model(runner.model).state_dict())
    only_ckpt |= set(state) - own if state else set()
    only_cfg |= own - set(state) if state else set()
    lines = ['cannot resume from this checkpoint'
             + (f' ({source})' if source else '')
             + ": its optimizer state was saved for other trainable parameters than the "
             "config's model has:"]
    lines += [f'  {p}' for p in problems]
    if only_ckpt:
        lines.append(f"  only in the checkpoint's model: {_shown(only_ckpt)}")
    if only_cfg:
        lines.append(f"  only in the config's model: {_shown(only_cfg)}")
    if not only_ckpt and not only_cfg:
        lines.append('  (the same parameter names: a parameter was frozen or unfrozen, '
                     'or paramwise_cfg changed)')
    lines.append(
        'fix: --resume continues a run, so it needs the config that run was trained with '
        '(the same model.backbone.adapter_blocks, adapter and frozen parts); to start a new '
        'run from these weights with the changed config, drop --resume and pass '
        '--cfg-options load_from=CHECKPOINT with a new --work-dir (matching weights load, '
        'the optimizer starts fresh).')
    raise ResumeMismatchError('\n'.join(lines))

"""Make a learning rate changed in the config take effect on ``--resume``."""
import logging
import math
from typing import Dict, List, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict
from mmseg.registry import HOOKS

from ..resume_check import META_KEY, check_resume_fits, optimizer_param_names


@HOOKS.register_module()
class ResumeLrHook(Hook):
    """On resume, use the config's learning rate instead of the checkpoint's.

    mmengine resumes the optimizer and scheduler state of the checkpoint,
    which holds the *old* lr (``param_groups[i]['lr']``/``'initial_lr'`` and
    the schedulers' ``base_values``), so lowering
    ``optim_wrapper.optimizer.lr`` and resuming (the usual fix after a
    divergence) silently trains on with the old lr. This hook runs in
    ``after_load_checkpoint``, after the checkpoint is read and before the
    runner loads its optimizer state, compares each param group's base lr of
    the freshly built optimizer (``initial_lr``, or ``lr`` without
    schedulers: the config's value, with ``paramwise_cfg`` multipliers and
    ``auto_scale_lr`` applied) with the checkpoint's, and where they differ
    scales that group's lr, ``initial_lr`` and the schedulers' base values by
    new / old. The schedule position is kept: the run continues where it
    stopped, with the new base lr. An unchanged config changes nothing. NAS
    configs (``weights``/``alpha`` optimizers) are handled per optimizer.

    Turn it off (keep the checkpoint's lr) with
    ``default_hooks = dict(resume_lr=None)``.

    It also refuses, before mmengine's raw ``parameter group that doesn't
    match the size of optimizer's group``, a resume whose optimizer state was
    saved for other trainable parameters (a changed ``adapter_blocks``...),
    naming the parameters that differ
    (:func:`~mmseg_naslora.engine.resume_check.check_resume_fits`); for that
    every checkpoint's ``meta`` gets the parameter names of each optimizer
    group (``optimizer_param_names``).
    """

    priority = 'NORMAL'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        wrapper = getattr(runner, 'optim_wrapper', None)
        if wrapper is not None and not isinstance(wrapper, dict):
            checkpoint.setdefault('meta', {})[META_KEY] = optimizer_param_names(
                runner.model, wrapper)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False) or 'optimizer' not in checkpoint:
            return
        if not self._adapter_cfg_changed(runner, checkpoint):
            # A changed adapter type/rank/arch is AdapterCheckpointHook's to report.
            check_resume_fits(runner, checkpoint, getattr(runner, '_load_from', None))
        wrapper = getattr(runner, 'optim_wrapper', None)
        if isinstance(wrapper, OptimWrapperDict):
            pairs = [(name, w, checkpoint['optimizer'].get(name))
                     for name, w in wrapper.optim_wrappers.items()]
        elif hasattr(wrapper, 'optimizer'):
            pairs = [(None, wrapper, checkpoint['optimizer'])]
        else:  # not built (should not happen in train())
            return
        schedulers = checkpoint.get('param_schedulers')
        for name, fresh, saved in pairs:
            if not isinstance(saved, dict) or 'param_groups' not in saved:
                continue
            if isinstance(schedulers, dict):
                states = schedulers.get(name, [])
            else:
                states = schedulers if name is None else []
            self._apply(name, fresh.optimizer.param_groups, saved['param_groups'],
                        states or [])

    @staticmethod
    def _adapter_cfg_changed(runner, checkpoint: dict) -> bool:
        stamped = (checkpoint.get('meta') or {}).get('adapter_cfg')
        if stamped is None:
            return False
        from ...checkpoint.adapter_file import describe_model, description_diff
        # By meaning, as AdapterCheckpointHook compares (e.g. alpha is lora_alpha).
        return bool(description_diff(stamped, describe_model(runner.cfg.model)))

    @staticmethod
    def _apply(name, fresh_groups: List[dict], saved_groups: List[dict],
               states: List[dict]) -> None:
        where = f"optimizer '{name}'" if name else 'the optimizer'
        if len(fresh_groups) != len(saved_groups):
            return  # another model; loading the optimizer state reports it
        changes: List[Tuple[int, float, float]] = []
        for i, (fresh, saved) in enumerate(zip(fresh_groups, saved_groups)):
            key = 'initial_lr' if 'initial_lr' in fresh and 'initial_lr' in saved else 'lr'
            new, old = float(fresh[key]), float(saved[key])
            if math.isclose(new, old, rel_tol=1e-9, abs_tol=0.0):
                continue
            changes.append((i, old, new))
            if old != 0:
                factor = new / old
                saved['lr'] = saved['lr'] * factor
            else:  # nothing to scale: start the group at the config's value
                factor = None
                saved['lr'] = float(fresh['lr'])
            if 'initial_lr' in saved:
                saved['initial_lr'] = new
            for state in states:
                if state.get('param_name', 'lr') != 'lr':
                    continue
                for field in ('base_values', '_last_value'):
                    values = state.get(field)
                    if isinstance(values, list) and i < len(values):
                        values[i] = new if factor is None else values[i] * factor
        if changes:
            shown: Dict[str, str] = {f'group {i}': f'{old:g} -> {new:g}'
                                     for i, old, new in changes[:4]}
            print_log(f'ResumeLrHook: the config changes the base lr of {where} '
                      f'({shown}{", ..." if len(changes) > 4 else ""}); resuming with the '
                      "config's lr, the schedule continues scaled accordingly. Set "
                      "default_hooks.resume_lr=None to keep the checkpoint's lr.",
                      logger='current', level=logging.WARNING)

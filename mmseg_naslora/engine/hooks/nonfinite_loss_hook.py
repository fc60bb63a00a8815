"""Stop training at the first NaN/Inf loss, before it reaches a checkpoint."""
import math
import os.path as osp
from typing import Optional

from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise ``FloatingPointError`` when a logged loss term is NaN or Inf.

    It runs in ``after_train_iter`` at HIGH priority, before mmengine's
    ``CheckpointHook`` (VERY_LOW), so the diverged weights of that iteration
    are never saved and the last good checkpoint is not overwritten; the
    message names that checkpoint.

    Args:
        keys (str): Substring of the ``outputs`` entries to check. Defaults to
            ``'loss'`` (every loss term, e.g. ``decode.loss_ce``).
    """

    priority = 'HIGH'

    def __init__(self, keys: str = 'loss') -> None:
        self.keys = keys

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        bad = {}
        for name, value in (outputs or {}).items():
            if self.keys not in name:
                continue
            try:
                number = float(value.detach() if hasattr(value, 'detach') else value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                bad[name] = number
        if not bad:
            return
        last = runner.message_hub.get_info('last_ckpt')
        if last is None:
            pointer = osp.join(runner.work_dir, 'last_checkpoint')
            if osp.isfile(pointer):
                with open(pointer) as f:
                    last = f.read().strip() or None
        where = (f'the last good checkpoint is {last} (not overwritten); continue from it '
                 'with --resume, or load_from it' if last else
                 'no checkpoint was saved before this point')
        terms = ', '.join(f'{k}={v}' for k, v in bad.items())
        raise FloatingPointError(
            f'non-finite loss at iteration {runner.iter + 1} ({terms}); training stopped '
            f'and {where}. Usual fixes: lower the learning rate, clip gradients '
            '(optim_wrapper.clip_grad=dict(max_norm=1.0)), check the masks for values '
            'outside the classes, and prefer bf16 to fp16 with --amp.')

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
    ``CheckpointHook`` (VERY_LOW), so the weights of the iteration that
    produced the non-finite loss are never saved.

    The message names only a checkpoint whose weights were *seen to give a
    finite loss*: a checkpoint saved right after iteration ``n - 1`` holds
    the weights the non-finite loss of iteration ``n`` was computed with
    (the diverging update happened before it was saved), so it is named as
    suspect, never as good. The good one is the newest checkpoint that was on
    disk when a later iteration still had a finite loss. Its advice works:
    ``--resume --cfg-options load_from=GOOD`` resumes from that file (plain
    ``--resume`` takes the newest one), and a learning rate lowered in the
    config takes effect on resume (:class:`ResumeLrHook`).

    Args:
        keys (str): Substring of the ``outputs`` entries to check. Defaults to
            ``'loss'`` (every loss term, e.g. ``decode.loss_ce``).
    """

    priority = 'HIGH'

    def __init__(self, keys: str = 'loss') -> None:
        self.keys = keys
        self._good: Optional[str] = None

    @staticmethod
    def _latest(runner) -> Optional[str]:
        """The newest checkpoint on disk (before this iteration's save), in the work dir."""
        last = runner.message_hub.get_info('last_ckpt')
        if not last:
            return None
        # After a resume from a copied work dir the hub holds the old directory's path.
        own = osp.join(runner.work_dir, osp.basename(last))
        return own if osp.isfile(own) else (last if osp.isfile(last) else None)

    def before_train(self, runner) -> None:
        self._good = None

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
        latest = self._latest(runner)
        if not bad:
            # This iteration's finite loss was computed with weights at least as new
            # as every checkpoint on disk now: those are good.
            self._good = latest
            return
        good = self._good
        suspect = latest if latest and latest != good else None
        if good:
            where = (f'The last checkpoint whose weights still gave a finite loss is {good} '
                     f'(not overwritten); continue from it with --resume --cfg-options '
                     f'load_from={good}')
            if suspect:
                where += (f'. Do not use {suspect}: it was saved after the diverging update '
                          '(plain --resume would pick it, being the newest)')
        elif suspect:
            where = (f'No checkpoint is known to be good: {suspect} was saved after the '
                     'diverging update (its weights produced this loss); restart from '
                     'the pretrained weights')
        else:
            where = 'No checkpoint was saved before this point'
        terms = ', '.join(f'{k}={v}' for k, v in bad.items())
        raise FloatingPointError(
            f'non-finite loss at iteration {runner.iter + 1} ({terms}); training stopped. '
            f'{where}. Usual fixes: lower the learning rate (e.g. --cfg-options '
            'optim_wrapper.optimizer.lr=...; on --resume the config\'s lr replaces the '
            'checkpoint\'s, see ResumeLrHook), clip gradients '
            '(optim_wrapper.clip_grad=dict(max_norm=1.0)), check the masks for values '
            'outside the classes, and prefer bf16 to fp16 with --amp.')

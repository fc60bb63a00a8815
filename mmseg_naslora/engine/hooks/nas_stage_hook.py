"""Schedules the NAS-LoRA stages: which iterations train α."""
import logging
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import HOOKS

from ...models.adapters.arch import arch_parameters
from ...utils.model import unwrap_model

#: Message-hub info with the first iteration of the search (for the figures).
SEARCH_START_KEY = 'nas/search_start'
_MOVED = ('interval', 'plot', 'max_history')


@HOOKS.register_module()
class NASStageHook(Hook):
    """Give the segmentor its step plan before every training iteration.

    NAS-LoRA's stage-wise optimisation (Chen et al., 2025, arXiv:2512.03499):
    the weights train alone for the first T_B epochs (``warmup``), then α and
    the weights together (``search``); optionally α is frozen again from
    ``freeze_after`` on (``frozen``). Before each iteration the stage is
    derived from ``runner.epoch`` or ``runner.iter`` and the model gets
    ``set_step_plan(stage, step_alpha)``, ``step_alpha`` being true in the
    search on iterations that are a multiple of the model's
    ``alpha_interval``. Nothing about the schedule is stored, so a resumed
    run continues in the right stage. The α statistics and figures are
    ``NASAlphaLoggerHook``'s.

    Args:
        warmup (int): T_B, the length of stage 1 in epochs (``by_epoch``) or
            iterations. 0 searches from the start. Defaults to 10.
        by_epoch (bool): Count ``warmup``/``freeze_after`` in epochs (needs
            an epoch-based loop) or in iterations. Defaults to True.
        freeze_after (int, optional): Start of the optional stage 3, in the
            same unit; must exceed ``warmup``. Defaults to None (no stage 3).
    """

    priority = 'NORMAL'

    def __init__(self,
                 warmup: int = 10,
                 by_epoch: bool = True,
                 freeze_after: Optional[int] = None,
                 **kwargs) -> None:
        moved = sorted(set(kwargs) & set(_MOVED))
        if moved:
            raise TypeError(
                f'NASStageHook no longer takes {moved}: the α statistics and figures moved to '
                f"their own hook; add dict(type='NASAlphaLoggerHook', "
                + ', '.join(f'{k}={kwargs[k]!r}' for k in moved) + ') to custom_hooks.')
        if kwargs:
            raise TypeError(f'NASStageHook got unexpected arguments {sorted(kwargs)}.')
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f'NASStageHook warmup (T_B) must be an integer >= 0, got {warmup}.')
        if freeze_after is not None and (int(freeze_after) != freeze_after
                                         or freeze_after <= warmup):
            raise ValueError(f'NASStageHook freeze_after ({freeze_after}) must be an integer '
                             f'greater than warmup ({warmup}), or None.')
        self.warmup = int(warmup)
        self.by_epoch = by_epoch
        self.freeze_after = None if freeze_after is None else int(freeze_after)
        self.unit = 'epoch' if by_epoch else 'iter'
        self._active = True

    def stage_at(self, progress: int) -> str:
        """The stage of epoch/iteration ``progress`` (0-based)."""
        if progress < self.warmup:
            return 'warmup'
        if self.freeze_after is not None and progress >= self.freeze_after:
            return 'frozen'
        return 'search'

    def before_train(self, runner) -> None:
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            raise ValueError('NASStageHook(by_epoch=True) cannot count epochs in an '
                             'IterBasedTrainLoop; set by_epoch=False and give warmup in '
                             'iterations.')
        model = unwrap_model(runner.model)
        if not hasattr(model, 'set_step_plan'):
            if arch_parameters(model):
                raise TypeError(f'NASStageHook needs a segmentor with a step plan '
                                f"(model type='NASEncoderDecoder'), got {type(model).__name__}.")
            print_log('NASStageHook: the model has no architecture parameters and no stage; '
                      'the hook does nothing.', logger='current', level=logging.WARNING)
            self._active = False
            return
        self._active = True
        length = runner.max_epochs if self.by_epoch else runner.max_iters
        if self.warmup >= length:
            print_log(f'NASStageHook: warmup T_B={self.warmup} {self.unit}s >= the training '
                      f'length ({length} {self.unit}s); α will never be searched.',
                      logger='current', level=logging.WARNING)
        search_start = (self.warmup * len(runner.train_dataloader)
                        if self.by_epoch else self.warmup)
        runner.message_hub.update_info(SEARCH_START_KEY, search_start)
        self._apply(runner, model, announce=False)
        frozen = '' if self.freeze_after is None else \
            f', α frozen again from {self.unit} {self.freeze_after}'
        print_log(f'NASStageHook: weights only for {self.warmup} {self.unit}s, then search '
                  f'({model.search_step} step, α every {model.alpha_interval} iteration(s))'
                  f'{frozen}; starting in stage {model.nas_stage!r} at {self.unit} '
                  f'{self._progress(runner)}.', logger='current')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._active:
            self._apply(runner, unwrap_model(runner.model))

    def _apply(self, runner, model, announce: bool = True) -> None:
        stage = self.stage_at(self._progress(runner))
        if announce and stage != model.nas_stage:
            print_log(f'NASStageHook: stage {model.nas_stage!r} -> {stage!r} at epoch '
                      f'{runner.epoch}, iter {runner.iter}.', logger='current')
        model.set_step_plan(stage, runner.iter % model.alpha_interval == 0)

    def _progress(self, runner) -> int:
        return runner.epoch if self.by_epoch else runner.iter


"""An encoder-decoder whose training step also trains the architecture weights α."""
import contextlib
import logging
import math
from collections import OrderedDict
from typing import (Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict
from mmseg.registry import MODELS

from ..adapters.arch import ALPHA_MARKER, arch_parameters
from .adapter_encoder_decoder import AdapterEncoderDecoder

#: ``warmup``: weights only, α never stepped (stage 1); ``search``: α and the
#: weights (stage 2); ``frozen``: weights only again (optional stage 3).
NAS_STAGES = ('warmup', 'search', 'frozen')
ALPHA_DATA = ('same', 'split')
#: ``joint``: one forward/backward, then both optimisers step; ``alternate``:
#: an α forward/backward/step, then a weight forward/backward/step.
SEARCH_STEPS = ('joint', 'alternate')


class NASStepPlan(NamedTuple):
    """What one training iteration does: its stage and whether α steps in it."""

    stage: str
    step_alpha: bool


@MODELS.register_module()
class NASEncoderDecoder(AdapterEncoderDecoder):
    """:class:`AdapterEncoderDecoder` with the stage-wise NAS-LoRA training step.

    NAS-LoRA (Chen et al., 2025, arXiv:2512.03499) trains the weights alone
    for the first T_B epochs, then α and the weights together, by first-order
    DARTS (Liu et al., ICLR 2019). Each iteration follows the
    :class:`NASStepPlan` that ``NASStageHook`` sets before it
    (:meth:`set_step_plan`); the segmentor reads nothing else about the
    schedule. Without the hook the plan is ``(nas_stage, True)``.

    ``search_step='joint'`` (the default with ``alpha_data='same'``): one
    forward and one backward of ``L(w_t, α_t)``, then the α and the weight
    optimisers step (the simultaneous form of one-level first-order DARTS:
    the α gradient is that of the alternating step, the weight gradient is
    taken at α_t instead of α_{t+1}). α keeps ``requires_grad=True`` in every
    stage, so every trainable parameter gets a gradient in every backward
    (DDP can run with ``find_unused_parameters=False``); outside a planned α
    step its gradient is dropped and its optimiser never steps, so α stays
    bit-for-bit unchanged in stages 1 and 3.

    ``search_step='alternate'``: an α step, then a weight step, each with the
    other group frozen through ``requires_grad`` (the only form that works
    with ``alpha_data='split'``, which gives α a held-out part of each batch;
    see ``docs/nas_training.md``). It costs two forwards and backwards.

    Both forms keep gradient accumulation (both wrappers need the same
    ``accumulative_counts``) and, under AMP, one loss scaler for both
    optimisers (``NASOptimWrapperConstructor`` makes them share it).

    The optimiser is the ``OptimWrapperDict(weights=..., alpha=...)`` of
    ``NASOptimWrapperConstructor``; a model without α also accepts a plain
    :class:`OptimWrapper` and trains like :class:`AdapterEncoderDecoder`.
    The alternating α step's log variables are prefixed ``alpha.``.

    Args:
        alpha_interval (int): α steps on iterations whose (0-based, absolute)
            index is a multiple of this; ``NASStageHook`` applies it.
            Defaults to 1.
        alpha_data (str): ``'same'`` (α and weights see the same batch) or
            ``'split'`` (α gets the first ``alpha_split`` of each batch).
            Defaults to ``'same'``.
        alpha_split (float): Fraction of each batch given to α with
            ``alpha_data='split'``, rounded half down (ties go to the
            weights); at least one sample goes to each step. A short batch
            (the last of an epoch) splits by the same rule; a batch of one
            sample trains the weights only (no α step that iteration).
            ``train_dataloader.batch_size`` must be at least 2, which the
            first training iteration checks. Defaults to 0.5.
        search_step (str, optional): ``'joint'`` or ``'alternate'``. None
            picks ``'joint'`` for ``alpha_data='same'`` and ``'alternate'``
            for ``'split'``. Defaults to None.
        nas_stage (str): Stage until a plan is set; ``'search'`` without the
            hook means search from the first iteration (T_B = 0). Defaults to
            ``'search'``.
        **kwargs: Arguments of :class:`AdapterEncoderDecoder` (``backbone``,
            ``decode_head``, ``aux_loss``...).
    """

    def __init__(self,
                 *args,
                 alpha_interval: int = 1,
                 alpha_data: str = 'same',
                 alpha_split: float = 0.5,
                 search_step: Optional[str] = None,
                 nas_stage: str = 'search',
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if int(alpha_interval) != alpha_interval or alpha_interval < 1:
            raise ValueError(f'alpha_interval must be an integer >= 1, got {alpha_interval}.')
        if alpha_data not in ALPHA_DATA:
            raise ValueError(f'alpha_data must be one of {list(ALPHA_DATA)}, got {alpha_data!r}.')
        if not 0. < alpha_split < 1.:
            raise ValueError(f'alpha_split must be in (0, 1), got {alpha_split}.')
        if search_step is None:
            search_step = 'joint' if alpha_data == 'same' else 'alternate'
        if search_step not in SEARCH_STEPS:
            raise ValueError(f'search_step must be one of {list(SEARCH_STEPS)}, '
                             f'got {search_step!r}.')
        if search_step == 'joint' and alpha_data == 'split':
            raise ValueError("search_step='joint' takes α's gradient from the weights' batch; "
                             "alpha_data='split' needs search_step='alternate'.")
        self.alpha_interval = int(alpha_interval)
        self.alpha_data = alpha_data
        self.alpha_split = float(alpha_split)
        self.search_step = search_step
        self.nas_stage = nas_stage
        # The batch size is checked once, on the first training batch (before
        # the warm-up spends any time), not only at the first α step.
        self._split_checked = False

    # The plan ----------------------------------------------------------------
    @property
    def nas_stage(self) -> str:
        """The stage of the current plan, one of :data:`NAS_STAGES`."""
        return self.step_plan.stage

    @nas_stage.setter
    def nas_stage(self, stage: str) -> None:
        self.set_step_plan(stage, stage == 'search')

    def set_step_plan(self, stage: str, step_alpha: bool) -> None:
        """Set what the next training iterations do (``NASStageHook`` calls it)."""
        if stage not in NAS_STAGES:
            raise ValueError(f'nas_stage must be one of {list(NAS_STAGES)}, got {stage!r}.')
        self.step_plan = NASStepPlan(stage, bool(step_alpha) and stage == 'search')

    def arch_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """``(name, α)`` of every architecture parameter (shared ones once)."""
        return arch_parameters(self)

    # Training step ----------------------------------------------------------
    def train_step(self,
                   data: Union[dict, tuple, list],
                   optim_wrapper: Union[OptimWrapper, OptimWrapperDict],
                   wrapper: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """One training iteration by the current :attr:`step_plan`.

        Args:
            data (dict | tuple | list): A batch from the dataloader.
            optim_wrapper (OptimWrapper | OptimWrapperDict): ``weights`` and
                ``alpha`` wrappers, or one plain wrapper for α-free models.
            wrapper (nn.Module, optional): The distributed wrapper of this
                model. Forwards run through it (so DDP all-reduces the
                gradients) and its ``optim_context`` is used. Defaults to None.

        Returns:
            dict[str, Tensor]: Log variables (the alternating α step's
            prefixed ``alpha.``).
        """
        runner_model = self if wrapper is None else wrapper
        weights_ow, alpha_ow = self._unpack(optim_wrapper)
        alpha = [p for _, p in self.arch_parameters() if p.requires_grad]
        if not alpha:
            return self._update(runner_model, data, [weights_ow])
        step_alpha = self.step_plan.step_alpha
        if self.search_step == 'joint':
            if step_alpha:
                return self._update(runner_model, data, [alpha_ow, weights_ow])
            return self._update(runner_model, data, [weights_ow], discard=alpha)
        alpha_ids = {id(p) for p in alpha}
        weights = [p for p in self.parameters() if p.requires_grad and id(p) not in alpha_ids]
        if self.step_plan.stage != 'search':
            # α will not step in this stage: drop what a search window left
            # half-accumulated (with accumulative_counts > 1).
            for param in alpha:
                param.grad = None
        if self.alpha_data == 'split' and not self._split_checked:
            self._check_split_batch_size(data)
        weight_data = data
        alpha_log: Dict[str, torch.Tensor] = OrderedDict()
        if step_alpha and self.alpha_data == 'split' and _batch_len(data) < 2:
            # A 1-sample batch (a short last batch of an epoch) cannot be split.
            # Using it for both steps would give α the weights' own sample,
            # breaking the held-out rule, so α skips this one iteration (as on
            # the iterations alpha_interval skips) and the weights train on it.
            # DefaultSampler pads every rank to the same length, so all DDP
            # ranks skip together.
            print_log("alpha_data='split': a batch of 1 sample cannot be split; the weights "
                      'train on it and α skips this iteration.', logger='current',
                      level=logging.DEBUG)
            step_alpha = False
        if step_alpha:
            alpha_data = data
            if self.alpha_data == 'split':
                alpha_data, weight_data = self._split_batch(data)
            with _frozen(weights):
                alpha_log = self._update(runner_model, alpha_data, [alpha_ow])
        with _frozen(alpha):
            log_vars = self._update(runner_model, weight_data, [weights_ow])
        log_vars.update((f'alpha.{k}', v) for k, v in alpha_log.items())
        return log_vars

    def _update(self, runner_model: nn.Module, data: Union[dict, tuple, list],
                wrappers: Sequence[OptimWrapper],
                discard: Iterable[nn.Parameter] = ()) -> Dict[str, torch.Tensor]:
        """One forward and backward; at a window's end, step every wrapper.

        The last wrapper drives: its ``optim_context`` (autocast, DDP
        ``no_sync`` inside an accumulation window), loss scaling and count.
        The gradients of ``discard`` are dropped instead of stepped.
        """
        lead = wrappers[-1]
        with lead.optim_context(runner_model):
            data = self.data_preprocessor(data, True)
            losses = runner_model._run_forward(data, mode='loss')
        parsed_losses, log_vars = self.parse_losses(losses)
        lead.backward(lead.scale_loss(parsed_losses))
        if lead.should_update():
            for param in discard:
                param.grad = None
            _step_together(wrappers)
            for wrapper in wrappers:
                wrapper.zero_grad()
        return log_vars

    def _unpack(self, optim_wrapper: Union[OptimWrapper, OptimWrapperDict]
                ) -> Tuple[OptimWrapper, Optional[OptimWrapper]]:
        """``(weights, alpha)`` wrappers; checks they fit the model and each other."""
        has_alpha = any(p.requires_grad for _, p in self.arch_parameters())
        if isinstance(optim_wrapper, OptimWrapperDict):
            unknown = sorted(set(optim_wrapper.keys()) - {'weights', 'alpha'})
            if 'weights' not in optim_wrapper or unknown:
                raise KeyError(
                    'NASEncoderDecoder needs OptimWrapperDict(weights=..., alpha=...), got keys '
                    f'{sorted(optim_wrapper.keys())}; build it with '
                    "optim_wrapper=dict(constructor='NASOptimWrapperConstructor', ...).")
            alpha_ow = optim_wrapper['alpha'] if 'alpha' in optim_wrapper else None
            weights_ow = optim_wrapper['weights']
        else:
            weights_ow, alpha_ow = optim_wrapper, None
        if has_alpha and alpha_ow is None:
            raise KeyError(
                f'{type(self).__name__} has architecture parameters (*{ALPHA_MARKER}) but the '
                'optim wrapper has no `alpha` entry; use optim_wrapper=dict(constructor='
                "'NASOptimWrapperConstructor', weights=dict(...), alpha=dict(...)).")
        if has_alpha and self.search_step == 'joint':
            counts = (alpha_ow._accumulative_counts, weights_ow._accumulative_counts)
            if counts[0] != counts[1]:
                raise ValueError(
                    "search_step='joint' steps α and the weights after the same backward, so "
                    'optim_wrapper.alpha and optim_wrapper.weights need the same '
                    f'accumulative_counts, got {counts[0]} and {counts[1]}; set it once at the '
                    "top level of optim_wrapper or use search_step='alternate'.")
        return weights_ow, alpha_ow

    def _check_split_batch_size(self, data: Union[dict, tuple, list]) -> None:
        """Refuse ``alpha_data='split'`` with batches of one sample, at the first batch.

        The first batch of a run holds ``train_dataloader.batch_size``
        samples (fewer only when the dataset is smaller), so this is the
        start-up check of the batch size: it fails before the warm-up
        instead of at the first α step, T_B later.
        """
        num = _batch_len(data)
        if num < 2:
            raise ValueError(
                f"alpha_data='split' splits each batch between α and the weights, so it needs "
                f'at least 2 samples per batch (per GPU), but the first training batch holds '
                f'{num}; set train_dataloader.batch_size=2 or more (and give the train set at '
                "least 2 samples), or use model.alpha_data='same'.")
        self._split_checked = True

    def _split_batch(self, data: Union[dict, tuple, list]) -> Tuple[dict, dict]:
        """``(alpha_part, weights_part)`` of a collated batch of 2 or more samples.

        α gets ``alpha_split * num`` samples rounded half down (so the
        weights get the larger half of an odd batch with the default 0.5,
        e.g. a short last batch of 3 gives 1 to α and 2 to the weights), and
        at least one sample goes to each part.
        """
        num = _batch_len(data)
        if num < 2:
            raise ValueError(
                f"alpha_data='split' cannot split a batch of {num} sample(s) (train_step skips "
                'the α step for such batches).')
        # Round half down: math.ceil(x - 0.5), not round()'s banker's rounding,
        # so odd batches split the same way whatever their size.
        cut = min(max(math.ceil(self.alpha_split * num - 0.5), 1), num - 1)
        batched = ('inputs', 'data_samples')
        alpha_part = {k: (v[:cut] if k in batched else v) for k, v in data.items()}
        weight_part = {k: (v[cut:] if k in batched else v) for k, v in data.items()}
        return alpha_part, weight_part


def _batch_len(data: Union[dict, tuple, list]) -> int:
    """Samples in a collated ``dict(inputs=..., data_samples=...)`` batch."""
    if not isinstance(data, dict) or 'inputs' not in data:
        raise TypeError("alpha_data='split' expects batches as dict(inputs=..., "
                        f'data_samples=...), got {type(data).__name__}.')
    return len(data['inputs'])


def _step_together(wrappers: Sequence[OptimWrapper]) -> None:
    """Step every wrapper after one backward.

    Plain wrappers step one by one. AMP wrappers must share one loss scaler
    (the backward was scaled by it once): each optimiser is unscaled, clipped
    and stepped, then the scale is updated once, as ``GradScaler`` expects
    for several optimisers. Stepping them one by one would update the scale
    between the two unscales whenever it grows or backs off.
    """
    amp = [isinstance(w, AmpOptimWrapper) for w in wrappers]
    if len(wrappers) == 1 or not any(amp):
        for wrapper in wrappers:
            wrapper.step()
        return
    scaler = wrappers[-1].loss_scaler
    if not all(amp) or any(w.loss_scaler is not scaler for w in wrappers):
        raise TypeError('the α and weight optim wrappers must both be AmpOptimWrappers sharing '
                        "one loss scaler; build them with NASOptimWrapperConstructor (or "
                        "tools/train.py --amp), which sets the type for both.")
    for wrapper in wrappers:
        scaler.unscale_(wrapper.optimizer)
        if wrapper.clip_grad_kwargs:
            wrapper._clip_grad()
        scaler.step(wrapper.optimizer)
    scaler.update(wrappers[-1]._scale_update_param)


@contextlib.contextmanager
def _frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Set ``requires_grad=False`` on ``params`` and restore it afterwards."""
    changed = [p for p in params if p.requires_grad]
    for param in changed:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in changed:
            param.requires_grad_(True)

"""An encoder-decoder whose training step alternates α and weight updates."""
import contextlib
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import SampleList

from ..adapters.conv_lora import collect_aux_losses
from ..adapters.nas_lora import ALPHA_MARKER

#: ``warmup``: weights only, α frozen (stage 1); ``search``: an α step then a
#: weight step (stage 2); ``frozen``: weights only again (optional stage 3).
NAS_STAGES = ('warmup', 'search', 'frozen')
ALPHA_DATA = ('same', 'split')


@MODELS.register_module()
class NASEncoderDecoder(EncoderDecoder):
    """:class:`EncoderDecoder` with the stage-wise NAS-LoRA training step.

    NAS-LoRA (Chen et al., 2025, arXiv:2512.03499) trains the weights alone
    for the first T_B epochs and then interleaves architecture (α) and
    weight updates, as first-order DARTS does (Liu et al., "DARTS:
    Differentiable Architecture Search", ICLR 2019). The structure follows
    mmrazor's ``Darts.train_step``, with one fix: gradients never leak from
    one step into the other.

    Per training iteration, by :attr:`nas_stage` (set by ``NASStageHook``):

    * ``'warmup'`` and ``'frozen'``: one weight step. α has
      ``requires_grad=False`` during it, gets no gradient and is never given
      to an optimiser step, so it stays bit-for-bit unchanged (Adam's weight
      decay would move a stepped parameter even with a zero gradient).
    * ``'search'``: an α step (every ``alpha_interval`` iterations), then a
      weight step. During each step the other group is frozen through
      ``requires_grad``, so a step's gradients only ever reach its own
      optimiser. Each group's own gradients are managed by its
      ``OptimWrapper`` (zeroed after each update, kept across
      ``accumulative_counts``: the other group's step leaves them alone).
      With accumulation, α and the weights each step once per window; the
      weight gradients of the window's earlier iterations were computed
      with the α from before the window's α update (see
      ``docs/benchmarks.md``).

    The optimiser must be the ``OptimWrapperDict(weights=..., alpha=...)`` of
    ``NASOptimWrapperConstructor``. A model without α also accepts a plain
    :class:`OptimWrapper` and then trains like :class:`EncoderDecoder`, so
    LoRA and Conv-LoRA configs can use this segmentor too.

    The α step's log variables are prefixed ``alpha.`` (``alpha.loss``,
    ``alpha.decode.loss_ce``...); the weight step's are logged as usual.
    Conv-LoRA's mixture-of-experts balance loss, when the model has one, is
    added to the loss dict as ``loss_moe``.

    ``alpha_data='split'`` holds out part of **each batch** for α: the first
    ``alpha_split`` fraction of the samples gives α's gradient and the rest
    the weights' gradient in that iteration (iterations without an α step
    give the whole batch to the weights). A DARTS-style dataset-level split
    would need a second dataloader and a custom train loop (mmrazor's
    ``DartsEpochBasedTrainLoop``), with its own sampler state on resume and
    under DDP; the batch split keeps MMEngine's stock loops, samplers and
    epoch semantics. Its held-out property is per iteration: over epochs the
    shuffled sampler shows every sample to both steps.

    Args:
        alpha_interval (int): Run the α step on iterations whose (0-based,
            absolute) index is a multiple of this. Defaults to 1.
        alpha_data (str): ``'same'`` (α and weights use the same batch, the
            one-level default) or ``'split'`` (see above). Defaults to
            ``'same'``.
        alpha_split (float): Fraction of each batch given to α with
            ``alpha_data='split'``; at least one sample goes to each step.
            Defaults to 0.5.
        aux_loss (bool): Add the adapters' auxiliary (MoE balance) loss as
            ``loss_moe``. Defaults to True.
        nas_stage (str): Stage until ``NASStageHook`` sets one; ``'search'``
            without the hook means joint search from the first iteration
            (T_B = 0). Defaults to ``'search'``.
        **kwargs: Arguments of :class:`EncoderDecoder` (``backbone``,
            ``decode_head``, ``data_preprocessor``...).
    """

    def __init__(self,
                 *args,
                 alpha_interval: int = 1,
                 alpha_data: str = 'same',
                 alpha_split: float = 0.5,
                 aux_loss: bool = True,
                 nas_stage: str = 'search',
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if int(alpha_interval) != alpha_interval or alpha_interval < 1:
            raise ValueError(f'alpha_interval must be an integer >= 1, got {alpha_interval}.')
        if alpha_data not in ALPHA_DATA:
            raise ValueError(f'alpha_data must be one of {list(ALPHA_DATA)}, got {alpha_data!r}.')
        if not 0. < alpha_split < 1.:
            raise ValueError(f'alpha_split must be in (0, 1), got {alpha_split}.')
        self.alpha_interval = int(alpha_interval)
        self.alpha_data = alpha_data
        self.alpha_split = float(alpha_split)
        self.aux_loss = bool(aux_loss)
        self.nas_stage = nas_stage
        # Only used when no runner publishes the iteration (direct calls).
        self._local_iter = 0

    @property
    def nas_stage(self) -> str:
        """The training stage, one of :data:`NAS_STAGES`."""
        return self._nas_stage

    @nas_stage.setter
    def nas_stage(self, stage: str) -> None:
        if stage not in NAS_STAGES:
            raise ValueError(f'nas_stage must be one of {list(NAS_STAGES)}, got {stage!r}.')
        self._nas_stage = stage

    def arch_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """``(name, α)`` of every architecture parameter (shared ones once)."""
        return [(n, p) for n, p in self.named_parameters() if n.endswith(ALPHA_MARKER)]

    # Losses ---------------------------------------------------------------
    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> dict:
        """:meth:`EncoderDecoder.loss` plus ``loss_moe`` from the adapters.

        The auxiliary loss is read inside the forward so that DDP sees the
        gate parameters in the graph of the forward's output.
        """
        losses = super().loss(inputs, data_samples)
        # Always read (and reset) so no stored loss keeps its graph alive.
        aux = collect_aux_losses(self)
        if self.aux_loss and aux is not None:
            losses['loss_moe'] = aux
        return losses

    # Training step ----------------------------------------------------------
    def train_step(self,
                   data: Union[dict, tuple, list],
                   optim_wrapper: Union[OptimWrapper, OptimWrapperDict],
                   wrapper: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """One training iteration of the current :attr:`nas_stage`.

        Args:
            data (dict | tuple | list): A batch from the dataloader.
            optim_wrapper (OptimWrapper | OptimWrapperDict): ``weights`` and
                ``alpha`` wrappers, or one plain wrapper for α-free models.
            wrapper (nn.Module, optional): The distributed wrapper of this
                model. Forwards run through it (so DDP all-reduces the
                gradients) and its ``optim_context`` is used. Defaults to None.

        Returns:
            dict[str, Tensor]: Log variables, the α step's prefixed ``alpha.``.
        """
        runner_model = self if wrapper is None else wrapper
        weights_ow, alpha_ow = self._unpack(optim_wrapper)
        alpha = [p for _, p in self.arch_parameters() if p.requires_grad]
        alpha_ids = {id(p) for p in alpha}
        weights = [p for p in self.parameters() if p.requires_grad and id(p) not in alpha_ids]
        iteration = self._current_iter()

        weight_data = data
        alpha_log: Dict[str, torch.Tensor] = OrderedDict()
        if self.nas_stage != 'search':
            # α will not step in this stage: drop what a search window left
            # half-accumulated (with accumulative_counts > 1).
            for param in alpha:
                param.grad = None
        if alpha and self.nas_stage == 'search' and iteration % self.alpha_interval == 0:
            alpha_data = data
            if self.alpha_data == 'split':
                alpha_data, weight_data = self._split_batch(data)
            alpha_log = self._update(runner_model, alpha_data, alpha_ow, frozen=weights)
        log_vars = self._update(runner_model, weight_data, weights_ow, frozen=alpha)
        log_vars.update((f'alpha.{k}', v) for k, v in alpha_log.items())
        return log_vars

    def _update(self, runner_model: nn.Module, data: Union[dict, tuple, list],
                optim_wrapper: OptimWrapper, frozen: List[nn.Parameter]) -> Dict[str, torch.Tensor]:
        """Forward, backward and step ``optim_wrapper`` with ``frozen`` frozen.

        The frozen group's gradients are left alone: ``requires_grad=False``
        already keeps this step's backward out of them, and with
        ``accumulative_counts > 1`` they are that group's own half-accumulated
        gradients, which its next step still needs.
        """
        with _frozen(frozen):
            with optim_wrapper.optim_context(runner_model):
                data = self.data_preprocessor(data, True)
                losses = runner_model._run_forward(data, mode='loss')
            parsed_losses, log_vars = self.parse_losses(losses)
            optim_wrapper.update_params(parsed_losses)
        return log_vars

    def _unpack(self, optim_wrapper: Union[OptimWrapper, OptimWrapperDict]
                ) -> Tuple[OptimWrapper, Optional[OptimWrapper]]:
        """``(weights, alpha)`` wrappers; checks they fit the model."""
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
        return weights_ow, alpha_ow

    def _current_iter(self) -> int:
        iteration = MessageHub.get_current_instance().get_info('iter')
        if iteration is None:
            iteration = self._local_iter
            self._local_iter += 1
        return int(iteration)

    def _split_batch(self, data: Union[dict, tuple, list]) -> Tuple[dict, dict]:
        """``(alpha_part, weights_part)`` of a collated batch."""
        if not isinstance(data, dict) or 'inputs' not in data:
            raise TypeError("alpha_data='split' expects batches as dict(inputs=..., "
                            f'data_samples=...), got {type(data).__name__}.')
        num = len(data['inputs'])
        if num < 2:
            raise ValueError(
                f"alpha_data='split' needs at least 2 samples per batch (per GPU), got {num}; "
                "raise train_dataloader.batch_size or use alpha_data='same'.")
        cut = min(max(int(round(self.alpha_split * num)), 1), num - 1)
        batched = ('inputs', 'data_samples')
        alpha_part = {k: (v[:cut] if k in batched else v) for k, v in data.items()}
        weight_part = {k: (v[cut:] if k in batched else v) for k, v in data.items()}
        return alpha_part, weight_part


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

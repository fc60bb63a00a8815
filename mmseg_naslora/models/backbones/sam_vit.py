"""SAM's ViT image encoder as a frozen mmseg backbone with adapters."""
from functools import partial
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS
from segment_anything.modeling import ImageEncoderViT

from ...checkpoint.base_weights import resize_pos_embed, resize_rel_pos
from .frozen_sam_encoder import FrozenSAMEncoder, arch_preset, check_multiple_of

# Kirillov et al., "Segment Anything", ICCV 2023 (build_sam.py).
SAM_VIT_ARCHS = {
    'b': dict(embed_dims=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    'l': dict(embed_dims=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    'h': dict(embed_dims=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
_ARCH_BY_WIDTH = {v['embed_dims']: k for k, v in SAM_VIT_ARCHS.items()}


@MODELS.register_module()
class SAMViT(FrozenSAMEncoder):
    """Frozen SAM ViT encoder (``ImageEncoderViT``) with adapters on ``attn.qkv``.

    The encoder is built with segment-anything's own modules, so official
    weights load key for key. Only the adapters train. The output is the
    neck's 256-channel map at 1/16 of the input.

    Args:
        arch (str | dict): ``'b'``, ``'l'``, ``'h'``, or a dict with
            ``embed_dims``, ``depth``, ``num_heads`` and ``global_attn_indexes``.
        img_size (int): Size the position embedding is built for; any input
            whose sides are multiples of 16 is accepted at run time.
            Defaults to 1024.
        window_size (int): Window of the non-global blocks. Defaults to 14.
        out_channels (int): Neck channels. Defaults to 256.
        checkpoint (str, optional): Official SAM ``.pth`` (or ``.safetensors``)
            whose ``image_encoder.*`` weights are loaded by :meth:`init_weights`.
        adapter (dict, optional): Adapter config injected into ``attn.qkv``,
            e.g. ``dict(type='LoRA', rank=3, lora_alpha=32)``. None trains nothing.
        adapter_blocks (Sequence[int], optional): Blocks to adapt; all if None.
        freeze (bool): Freeze every non-adapter weight. Defaults to True.
        with_cp (bool): Activation checkpointing of each block, trading compute
            for memory. Defaults to False.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'b',
                 img_size: int = 1024,
                 window_size: int = 14,
                 out_channels: int = 256,
                 checkpoint: Optional[str] = None,
                 adapter: Optional[dict] = None,
                 adapter_blocks: Optional[Sequence[int]] = None,
                 freeze: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(checkpoint=checkpoint, freeze=freeze, with_cp=with_cp, init_cfg=init_cfg)
        self.arch = self._parse_arch(arch)
        check_multiple_of(img_size, 16, 'img_size')
        self.patch_size = 16
        self.encoder = ImageEncoderViT(
            img_size=img_size,
            patch_size=self.patch_size,
            embed_dim=self.arch['embed_dims'],
            depth=self.arch['depth'],
            num_heads=self.arch['num_heads'],
            global_attn_indexes=tuple(self.arch['global_attn_indexes']),
            window_size=window_size,
            out_chans=out_channels,
            mlp_ratio=4,
            qkv_bias=True,
            use_rel_pos=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6))
        self._freeze_and_adapt(arch, adapter, adapter_blocks)

    @staticmethod
    def _parse_arch(arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return arch_preset(arch, SAM_VIT_ARCHS, 'SAM ViT')
        required = {'embed_dims', 'depth', 'num_heads', 'global_attn_indexes'}
        if not required <= set(arch):
            raise KeyError(f'custom SAM ViT arch needs keys {sorted(required)}, '
                           f'got {sorted(arch)}.')
        return dict(arch)

    def _fit_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict:
        """Fit the checkpoint's position tables to this encoder's input size."""
        own = self.encoder.state_dict()
        state = dict(state)
        if 'pos_embed' in state and state['pos_embed'].shape[-1] == own['pos_embed'].shape[-1]:
            state['pos_embed'] = resize_pos_embed(state['pos_embed'],
                                                  own['pos_embed'].shape[1:3])
        for key, value in state.items():
            if 'rel_pos' in key and key in own and value.shape[-1] == own[key].shape[-1]:
                state[key] = resize_rel_pos(value, own[key].shape[0])
        return state

    def _arch_hint(self, state: Mapping[str, torch.Tensor]) -> str:
        # Other SAM families share the image_encoder.* prefix but not the layout.
        if any(k.startswith('trunk.') for k in state):
            return ("hint: this is a SAM 2 (Hiera) checkpoint; use backbone type='SAM2Hiera' "
                    "and decode_head type='SAM2MaskDecoderHead'.")
        if any(k.startswith('layers.') for k in state):
            return ("hint: this is a TinyViT (LiteMedSAM/MobileSAM) checkpoint; use "
                    "backbone type='SAMTinyViT'.")
        width = state['patch_embed.proj.weight'].shape[0] \
            if 'patch_embed.proj.weight' in state else None
        depth = len({k.split('.')[1] for k in state if k.startswith('blocks.')})
        guess = _ARCH_BY_WIDTH.get(width)
        found = f'the checkpoint has width {width} and depth {depth}'
        if guess:
            return f"hint: {found}, which is SAM ViT-{guess.upper()}; set arch='{guess}'."
        return f'hint: {found}; pass a matching arch dict.'

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        self._check_input_size(x, self.patch_size)
        enc = self.encoder
        x = enc.patch_embed(x)
        x = x + resize_pos_embed(enc.pos_embed, x.shape[1:3])
        for block in enc.blocks:
            x = self._checkpointed(block, x)
        return (enc.neck(x.permute(0, 3, 1, 2)), )


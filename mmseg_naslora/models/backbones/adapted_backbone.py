"""Adapters (LoRA, Conv-LoRA, NAS-LoRA) in mmseg's own ViT backbones.

:class:`AdaptedBackbone` builds an mmseg backbone from its config, freezes it,
injects an adapter into the fused qkv projection of every attention layer and
returns the backbone's outputs unchanged in form. Supported: mmseg's
``VisionTransformer``, ``BEiT`` and ``MAE`` (and their subclasses).

Two conversions give every attention a qkv ``nn.Linear`` holding exactly the
original weights, since adapters wrap ``nn.Linear`` layers:

- ``VisionTransformer`` attends with mmcv's ``MultiheadAttention``, which wraps
  ``nn.MultiheadAttention`` (a fused ``in_proj_weight``, not a layer). That
  module is replaced by :class:`QKVSelfAttention`, which computes the same
  attention from a ``qkv`` ``nn.Linear``.
- ``BEiT`` (``qv_bias=True``) adds ``cat(q_bias, 0, v_bias)`` in a functional
  ``F.linear`` that would bypass an adapter on ``qkv``; the biases become the
  frozen bias of ``qkv`` (the k part stays zero) and ``qkv`` is called.

The token layout: all three run global attention on ``[cls, patch tokens]``
(BEiT's ``window_size`` is the whole patch grid, i.e. there are no windows).
Each forward reads the patch grid from the patch embedding and tells every
adapter ``grid_size`` and ``prefix_tokens`` (1 with a class token), so a
spatial bottleneck runs on the patch grid only and is the identity on the
class token, at any input size the backbone itself accepts.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.models.backbones import BEiT, VisionTransformer
from mmseg.registry import MODELS

from ...checkpoint.adapter_file import complete_from_base, describe_backbone
from ...checkpoint.base_weights import load_state_dict_file
from ..adapters.inject import (inject_adapters, iter_adapters, replace_module,
                               unwrapped_state_keys)

#: Backbones whose token layout (class token + global patch grid) is known here.
SUPPORTED_BACKBONES = (VisionTransformer, BEiT)  # MAE subclasses BEiT


class QKVSelfAttention(nn.Module):
    """``nn.MultiheadAttention`` (self-attention) with its in-projection as a ``qkv`` layer.

    It computes what the given ``nn.MultiheadAttention`` computes, from the same
    parameters: ``in_proj_weight``/``in_proj_bias`` become ``qkv.weight``/``qkv.bias``
    and ``out_proj`` is kept, so an adapter can wrap ``qkv`` like SAM's.

    Args:
        attn (nn.MultiheadAttention): The module to replace; its parameters are
            taken over (shared, not copied).
    """

    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        missing = []
        if not attn._qkv_same_embed_dim:
            missing.append('one fused in_proj_weight (kdim == vdim == embed_dim)')
        if attn.bias_k is not None or attn.add_zero_attn:
            missing.append('no add_bias_kv/add_zero_attn')
        if missing:
            raise ValueError(f'QKVSelfAttention needs an nn.MultiheadAttention with '
                             f'{" and ".join(missing)}.')
        self.embed_dim = attn.embed_dim
        self.num_heads = attn.num_heads
        self.dropout = attn.dropout
        self.batch_first = attn.batch_first
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim,
                             bias=attn.in_proj_bias is not None)
        self.qkv.weight = attn.in_proj_weight
        if attn.in_proj_bias is not None:
            self.qkv.bias = attn.in_proj_bias
        self.out_proj = attn.out_proj

    def forward(self,
                query: torch.Tensor,
                key: torch.Tensor,
                value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None,
                **kwargs) -> Tuple[torch.Tensor, None]:
        """Self-attention, with ``nn.MultiheadAttention``'s signature.

        Returns:
            tuple: The output, and None in place of the attention weights
            (mmcv's ``MultiheadAttention`` uses only the output).
        """
        if not (_same_tensor(query, key) and _same_tensor(query, value)):
            raise ValueError('QKVSelfAttention computes self-attention only (query, key and '
                             'value the same tensor); this backbone does cross-attention, '
                             'which one fused qkv projection cannot express.')
        x = query if self.batch_first else query.transpose(0, 1)  # (N, L, C)
        n, length, channels = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = _additive_mask(attn_mask, key_padding_mask, n, self.num_heads, length, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, channels))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    # mmcv passes query/key/value as separate transposed views of one tensor.
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape
                      and a.stride() == b.stride())


def _additive_mask(attn_mask: Optional[torch.Tensor],
                   key_padding_mask: Optional[torch.Tensor], n: int, heads: int,
                   length: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """nn.MultiheadAttention's masks (True = masked out) as one additive mask."""
    mask = None
    for part, shape in ((attn_mask, None), (key_padding_mask, (n, 1, 1, length))):
        if part is None:
            continue
        if part.dtype == torch.bool:
            part = torch.zeros(part.shape, dtype=dtype, device=part.device).masked_fill(
                part, float('-inf'))
        part = part.to(dtype)
        if shape is not None:
            part = part.reshape(shape)
        elif part.dim() == 3:  # (N * heads, L, L)
            part = part.reshape(n, heads, length, length)
        mask = part if mask is None else mask + part
    return mask


@MODELS.register_module()
class AdaptedBackbone(BaseModule):
    """An mmseg ViT backbone, frozen, with adapters on every attention's qkv.

    ``AdaptedBackbone(backbone=dict(type='VisionTransformer', ...),
    adapter=dict(type='NASLoRA', rank=3))`` returns what the inner backbone
    returns (e.g. the ``out_indices`` feature maps). Only the adapters train.
    The converted layers' keys (``layers.0.attn.attn.qkv.base_layer.weight``)
    differ from mmseg's (``layers.0.attn.attn.in_proj_weight``); pretrained
    weights are therefore loaded through :attr:`checkpoint`, which maps them.

    Class token: a spatial bottleneck (Conv-LoRA, NAS-LoRA) runs on the patch
    grid only; the class token's bottleneck is the identity, so it gets the
    plain low-rank update ``s·B·A·x`` (it has no grid position to convolve).

    Args:
        backbone (dict): Config of the mmseg backbone (``VisionTransformer``,
            ``BEiT``, ``MAE``). Put pretrained weights in :attr:`checkpoint`,
            not in its ``pretrained``/``init_cfg``.
        adapter (dict, optional): Adapter config, e.g. ``dict(type='LoRA',
            rank=3, lora_alpha=32)``. None trains nothing in the backbone (the
            conversions still happen, so the state-dict layout is the same).
        adapter_blocks (Sequence[int], optional): Indices into the backbone's
            ``layers`` to adapt; all if None.
        freeze (bool): Freeze every non-adapter weight. Defaults to True.
        checkpoint (str, optional): mmseg-format weights of the inner backbone
            (e.g. converted with mmseg's ``vit2mmseg.py``/``beit2mmseg.py``, or
            mmpretrain's MAE file), loaded by :meth:`init_weights`; a leading
            ``backbone.`` is stripped and the position tables are resized
            with the backbone's own methods.
        init_cfg (dict, optional): mmengine init config of the wrapper.
    """

    def __init__(self,
                 backbone: dict,
                 adapter: Optional[dict] = None,
                 adapter_blocks: Optional[Sequence[int]] = None,
                 freeze: bool = True,
                 checkpoint: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise KeyError("AdaptedBackbone needs `backbone`, the inner backbone's config, "
                           "e.g. backbone=dict(type='VisionTransformer', ...).")
        inner_init = backbone.get('init_cfg') or {}
        if backbone.get('pretrained') or (isinstance(inner_init, dict)
                                          and inner_init.get('type') == 'Pretrained'):
            raise ValueError('AdaptedBackbone: set the pretrained file as '
                             'AdaptedBackbone(checkpoint=...), not as the inner '
                             "backbone's `pretrained`/`init_cfg`: the adapted layers have "
                             'new keys, which only `checkpoint` maps.')
        self.backbone = MODELS.build(backbone)
        self.checkpoint = checkpoint
        #: Old (mmseg) key -> new key of every converted tensor, for checkpoints.
        self._renamed: Dict[str, str] = {}
        self._qv_bias_prefixes: List[str] = []
        self._convert_attention()
        if freeze:
            self.backbone.requires_grad_(False)
        self.prefix_tokens = self._prefix_tokens()
        self.adapted_layers: List[str] = []
        if adapter is not None:
            self.adapted_layers = inject_adapters(
                self.backbone, adapter, target=r'(^|\.)qkv$', blocks=adapter_blocks,
                block_pattern=r'(?:^|\.)layers\.(\d+)\.')
            self._set_layout(None)
        self.backbone.patch_embed.register_forward_hook(self._record_grid)
        self.adapter_description = describe_backbone(type(self).__name__, None, adapter)
        self.register_load_state_dict_pre_hook(complete_from_base)

    # Conversions -------------------------------------------------------------
    def _convert_attention(self) -> None:
        """Give every attention a qkv nn.Linear with the original weights."""
        found = 0
        for name, module in list(self.backbone.named_modules()):
            if isinstance(module, nn.MultiheadAttention):
                replace_module(self.backbone, name, QKVSelfAttention(module))
                for old, new in (('in_proj_weight', 'qkv.weight'),
                                 ('in_proj_bias', 'qkv.bias')):
                    self._renamed[f'{name}.{old}'] = f'{name}.{new}'
                found += 1
            elif isinstance(getattr(module, 'qkv', None), nn.Linear):
                if getattr(module, 'bias', None) == 'qv_bias':
                    self._fold_qv_bias(name, module)
                found += 1
        kind = type(self.backbone).__name__
        if not found:
            raise ValueError(
                f'AdaptedBackbone: no attention module with a qkv projection found in {kind} '
                '(it looks for nn.MultiheadAttention, or an attention module with a `qkv` '
                'nn.Linear); supported backbones: VisionTransformer, BEiT, MAE.')
        if not isinstance(self.backbone, SUPPORTED_BACKBONES) or not hasattr(
                self.backbone, 'patch_embed'):
            raise ValueError(
                f'AdaptedBackbone: {kind} has attention with a qkv projection, but its '
                'token layout (class token, patch grid, windows) is unknown here, so the '
                'adapters could not be told their token grid; supported backbones: '
                'VisionTransformer, BEiT, MAE (and their subclasses).')

    def _fold_qv_bias(self, name: str, attn: nn.Module) -> None:
        """BEiT's ``F.linear(x, qkv.weight, cat(q_bias, 0, v_bias))`` as ``qkv(x)``."""
        with torch.no_grad():
            bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias))
        linear = nn.Linear(attn.qkv.in_features, attn.qkv.out_features, bias=True)
        linear.weight = attn.qkv.weight
        linear.bias = nn.Parameter(bias, requires_grad=attn.q_bias.requires_grad)
        del attn.q_bias, attn.v_bias
        attn.qkv = linear
        attn.bias = True  # BEiTAttention.forward then calls self.qkv(x)
        self._qv_bias_prefixes.append(f'{name}.')

    # Token layout ------------------------------------------------------------
    def _prefix_tokens(self) -> int:
        if isinstance(self.backbone, VisionTransformer):
            return int(self.backbone.with_cls_token)
        return 1  # BEiT and MAE always prepend the class token

    def _set_layout(self, grid: Optional[Tuple[int, int]]) -> None:
        # Iterated on every call: export_adapters may have replaced the adapters.
        for _, adapter in iter_adapters(self.backbone):
            adapter.prefix_tokens = self.prefix_tokens
            if grid is not None:
                adapter.grid_size = grid

    def _record_grid(self, module: nn.Module, args: tuple, output: tuple) -> None:
        grid = tuple(int(s) for s in output[1])
        fixed = getattr(self.backbone, 'patch_shape', None)  # BEiT/MAE tables
        if fixed is not None and tuple(fixed) != grid:
            raise ValueError(
                f'{type(self.backbone).__name__} is built for a {fixed[0]}x{fixed[1]} patch '
                f'grid (img_size), but this input gives {grid[0]}x{grid[1]}; its position '
                'tables do not resize at run time: set backbone.img_size to the input size '
                "(and test with test_cfg mode='slide' at that crop).")
        self._set_layout(grid)

    def forward(self, x: torch.Tensor) -> tuple:
        return self.backbone(x)

    # Weights -----------------------------------------------------------------
    def init_weights(self) -> None:
        """The inner backbone's own init, then :attr:`checkpoint`; adapters keep theirs."""
        # The inner inits touch every nn.Linear/Conv2d/norm, adapters' included.
        kept = {name: {k: v.clone() for k, v in a.state_dict().items()
                       if not k.startswith('base_layer.')}
                for name, a in iter_adapters(self.backbone)}
        self.backbone.init_weights()
        for name, state in kept.items():
            self.backbone.get_submodule(name).load_state_dict(state, strict=False)
        if self.checkpoint is not None:
            self.load_base_checkpoint(self.checkpoint)
        self._is_init = True

    def load_base_checkpoint(self, path: str) -> None:
        """Load mmseg-format weights of the un-adapted inner backbone.

        Every parameter of the inner backbone must be in the file (buffers,
        e.g. BEiT's ``relative_position_index``, may be absent); extra keys,
        such as a classification head, are reported and skipped.
        """
        state = load_state_dict_file(path)
        if any(k.startswith('backbone.') for k in state):
            state = {k[len('backbone.'):]: v for k, v in state.items()
                     if k.startswith('backbone.')}
        state = self._resize_positions(dict(state))
        for prefix in self._qv_bias_prefixes:
            if f'{prefix}q_bias' in state:
                q, v = state.pop(f'{prefix}q_bias'), state.pop(f'{prefix}v_bias')
                state[f'{prefix}qkv.bias'] = torch.cat((q, torch.zeros_like(q), v))
        state = {self._renamed.get(k, k): v for k, v in state.items()}
        keys = unwrapped_state_keys(self.backbone)
        own = self.backbone.state_dict()
        params = {n for n, _ in self.backbone.named_parameters()}
        missing = sorted(k for k in keys if k not in state and keys[k] in params)
        mismatched = [f'{k}: expected {tuple(own[keys[k]].shape)}, found {tuple(v.shape)}'
                      for k, v in state.items()
                      if k in keys and own[keys[k]].shape != v.shape]
        if missing or mismatched:
            raise ValueError(
                f'{path} does not fit the {type(self.backbone).__name__} of AdaptedBackbone: '
                f'missing {len(missing)} parameters (e.g. {missing[:4]}), shape mismatches '
                f'{mismatched[:3]}; check backbone.embed_dims/num_layers/num_heads/'
                'patch_size against the checkpoint, and that it is in mmseg format '
                '(tools/model_converters/vit2mmseg.py or beit2mmseg.py).')
        unexpected = sorted(k for k in state if k not in keys)
        if unexpected:
            print_log(f'AdaptedBackbone: skipped {len(unexpected)} keys of {path} that the '
                      f'backbone does not have (e.g. {unexpected[:4]})', logger='current')
        self.backbone.load_state_dict({keys[k]: v for k, v in state.items() if k in keys},
                                      strict=False)
        print_log(f'AdaptedBackbone: loaded {type(self.backbone).__name__} weights from '
                  f'{path}', logger='current')

    def _resize_positions(self, state: dict) -> dict:
        """Fit the checkpoint's position tables with the backbone's own methods."""
        inner = self.backbone
        if isinstance(inner, BEiT):
            state = inner.resize_rel_pos_embed(state)
            if hasattr(inner, 'resize_abs_pos_embed'):  # MAE
                state = inner.resize_abs_pos_embed(state)
        elif 'pos_embed' in state and state['pos_embed'].shape != inner.pos_embed.shape:
            side = int(math.sqrt(state['pos_embed'].shape[1] - 1))
            state['pos_embed'] = inner.resize_pos_embed(
                state['pos_embed'], (inner.img_size[0] // inner.patch_size,
                                     inner.img_size[1] // inner.patch_size),
                (side, side), inner.interpolate_mode)
        return state


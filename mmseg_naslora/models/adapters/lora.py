"""LoRA on a frozen linear layer, with a replaceable bottleneck.

Conv-LoRA and NAS-LoRA differ from LoRA only in what happens to ``z = A·x``
inside the rank-r bottleneck, so they subclass :class:`LoRA` and override
:meth:`LoRA.bottleneck`. The layer owns its state, forward and merge; putting
it into a model is :mod:`.inject`'s job (the split follows peft's
``LoraLayer``/``LoraModel``).
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmseg.registry import MODELS


@MODELS.register_module()
class LoRA(nn.Module):
    """Low-rank adaptation ``h = W0·x + s·B(A·x)`` of a frozen ``nn.Linear``.

    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    ``A`` is Kaiming-uniform and ``B`` zero, so the wrapped layer starts out
    exactly equal to the base layer.

    The input keeps its token-grid shape ``(N, H, W, C)`` (SAM ViT windows or
    global grids); a flat ``(N, L, C)`` input is viewed as a grid of
    :attr:`grid_size`, or as a square grid when that is unset.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt (e.g. a fused qkv).
        rank (int): Bottleneck rank r. Defaults to 3.
        alpha (float): Scaling numerator; the update is scaled by alpha / r.
            Defaults to 32.
        dropout (float): Dropout on the LoRA branch output. Defaults to 0.
    """

    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 alpha: float = 32.,
                 dropout: float = 0.) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f'{type(self).__name__} adapts nn.Linear layers, '
                            f'got {type(base_layer).__name__}.')
        if int(rank) != rank or rank < 1:
            raise ValueError(f'LoRA rank must be an integer >= 1, got {rank}.')
        self.base_layer = base_layer
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.lora_A = nn.Linear(base_layer.in_features, self.rank, bias=False)
        self.lora_B = nn.Linear(self.rank, base_layer.out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.grid_size: Optional[Tuple[int, int]] = None
        self.merged = False
        self.reset_parameters()
        base_layer.requires_grad_(False)

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @classmethod
    def after_inject(cls, adapters: List['LoRA']) -> None:
        """Called once with all adapters of this type that one injection made.

        A hook for cross-layer state (e.g. NAS-LoRA's shared α); no-op here.
        """

    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        """Transform ``z = A·x`` of shape ``(N, H, W, r)``; identity here."""
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        z = self.lora_A(x.to(self.lora_A.weight.dtype))
        if not self.mergeable:  # a spatial bottleneck needs the token grid
            z = self.bottleneck(self._to_grid(z)).reshape(z.shape)
        return out + self.dropout(self.lora_B(z)).to(out.dtype) * self.scaling

    def _to_grid(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 4:
            return z
        if z.dim() != 3:
            raise ValueError(f'{type(self).__name__} expects (N, H, W, C) or '
                             f'(N, L, C) tokens, got shape {tuple(z.shape)}.')
        n, length, r = z.shape
        h, w = self.grid_size or (math.isqrt(length), math.isqrt(length))
        if h * w != length:
            raise ValueError(
                f'{length} tokens do not form a {h}x{w} grid; set '
                f'`grid_size` on the adapter before calling it.')
        return z.view(n, h, w, r)

    # Merging, in fp32 so that repeated merge/unmerge does not drift.
    @property
    def mergeable(self) -> bool:
        """Whether the bottleneck is token-wise linear, so ``W0`` can absorb it."""
        return type(self).bottleneck is LoRA.bottleneck

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``s·B·A``, shaped like the base weight, in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merge(self) -> None:
        """Fold the update into the base weight; the forward then skips the branch."""
        if self.merged:
            return
        if not self.mergeable:
            raise RuntimeError(
                f'{type(self).__name__} mixes neighbouring tokens in its '
                'bottleneck and cannot be folded into the linear weight; '
                'use tools/export.py to collapse it instead.')
        self._add_to_base(self.delta_weight())
        self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge`, restoring the base weight."""
        if not self.merged:
            return
        self._add_to_base(-self.delta_weight())
        self.merged = False

    def _add_to_base(self, delta: torch.Tensor) -> None:
        weight = self.base_layer.weight
        with torch.no_grad():
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))

    def extra_repr(self) -> str:
        return (f'in={self.in_features}, out={self.out_features}, '
                f'rank={self.rank}, scaling={self.scaling:g}')

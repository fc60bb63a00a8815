"""LoRA with one convolution in the bottleneck: the inference form of a linear cell."""
from typing import Optional

import torch
import torch.nn as nn
from mmseg.registry import MODELS

from .lora import BottleneckMap, LoRA, accepts_deprecated_alpha
from .ops import pad_kernel


@MODELS.register_module()
class ConvBottleneckLoRA(LoRA):
    """LoRA with one ``r -> r`` convolution in the bottleneck.

    ``h = W0·x + s·B(conv(A·x) + b)``; what ``tools/export.py --mode collapse``
    turns any adapter with a linear bottleneck into (:meth:`from_adapter`).
    The conv starts as the identity (Dirac) with a zero bias, i.e. as LoRA.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt.
        rank (int): Bottleneck rank r. Defaults to 3.
        lora_alpha (float): LoRA scaling numerator (scale lora_alpha / r).
            Defaults to 32.
        dropout (float): Dropout on the branch output. Defaults to 0.
        kernel_size (int): Odd conv kernel side. Defaults to 3.
        bias (bool): Give the conv a bias (a collapsed BN shift). Defaults to False.
        mask_padding (bool): Keep window-padding tokens out of the bottleneck
            (see :class:`LoRA`). Defaults to True.
    """

    @accepts_deprecated_alpha
    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 lora_alpha: float = 32.,
                 dropout: float = 0.,
                 kernel_size: int = 3,
                 bias: bool = False,
                 mask_padding: bool = True) -> None:
        super().__init__(base_layer, rank=rank, lora_alpha=lora_alpha, dropout=dropout)
        if int(kernel_size) != kernel_size or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError('ConvBottleneckLoRA kernel_size must be an odd '
                             f'integer >= 1, got {kernel_size}.')
        self.kernel_size = int(kernel_size)
        self.mask_padding = bool(mask_padding)
        self.conv = nn.Conv2d(self.rank, self.rank, self.kernel_size,
                              padding=self.kernel_size // 2, bias=bias)
        nn.init.dirac_(self.conv.weight)
        if bias:
            nn.init.zeros_(self.conv.bias)

    @classmethod
    def from_adapter(cls, adapter: LoRA, kernel_size: Optional[int] = None,
                     bias: Optional[bool] = None) -> 'ConvBottleneckLoRA':
        """The exact eval-mode equivalent of ``adapter``, whose bottleneck is linear.

        It shares ``adapter``'s base layer and copies ``A``, ``B``, the scale,
        the masking and the grid.

        Args:
            adapter (LoRA): An adapter whose :meth:`~LoRA.bottleneck_map` exists.
            kernel_size (int, optional): Centre the kernel in this larger
                size (one config builds every layer). Defaults to its own.
            bias (bool, optional): Give the conv a bias even if the map has
                none (a zero one). Defaults to whether the map has one.
        """
        linear = adapter.bottleneck_map()
        if linear is None:
            raise ValueError(f'{type(adapter).__name__} has no linear bottleneck to '
                             'collapse into a convolution.')
        size = kernel_size or linear.kernel_size
        weight = adapter.lora_A.weight
        out = cls(adapter.base_layer, rank=adapter.rank,
                  dropout=getattr(adapter.dropout, 'p', 0.), kernel_size=size,
                  bias=linear.bias is not None if bias is None else bias,
                  mask_padding=adapter.spatial and adapter.mask_padding)
        out.scaling = adapter.scaling
        out.grid_size, out.valid_size = adapter.grid_size, adapter.valid_size
        with torch.no_grad():
            out.lora_A.weight.copy_(adapter.lora_A.weight)
            out.lora_B.weight.copy_(adapter.lora_B.weight)
            out.conv.weight.copy_(pad_kernel(linear.kernel, size))
            if linear.bias is not None:
                out.conv.bias.copy_(linear.bias)
            elif out.conv.bias is not None:
                out.conv.bias.zero_()
        return out.to(device=weight.device, dtype=weight.dtype).train(adapter.training)

    def bottleneck(self, z: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conv(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def bottleneck_map(self, dtype: torch.dtype = torch.float64) -> BottleneckMap:
        bias = self.conv.bias
        return BottleneckMap(self.conv.weight.detach().to(dtype),
                             None if bias is None else bias.detach().to(dtype))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, kernel_size={self.kernel_size}, '
                f'bias={self.conv.bias is not None}, mask_padding={self.mask_padding}')

"""The DARTS candidate operations, on the r channels of a LoRA bottleneck.

Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019
(``operations.py``/``genotypes.py`` of the official code): the eight
primitives, stride 1, 'same' padding.

Two variants:

``'darts'``
    As DARTS searches: convolutions are ReLU-Conv-BN, ``sep_conv`` is the
    double ReLU-depthwise-pointwise-BN stack, pooling is followed by a
    BN, every BN is ``affine=False``, and ``avg_pool_3x3`` excludes the
    padding from its count.
``'linear'``
    No ReLU and no BN, so every op but ``max_pool_3x3`` is a convolution
    and the whole mixture collapses into one kernel (:meth:`CandidateOp.dense_kernel`).
    Two changes keep that collapse *exact* at the image (window) borders:

    * ``avg_pool_3x3`` counts the zero padding (``count_include_pad=True``),
      i.e. it is the fixed box kernel ``1/9``; with ``False`` the divisor
      changes at the borders and no fixed kernel reproduces it.
    * ``sep_conv`` is a *single* depthwise-pointwise stack. Two stacked
      zero-padded convolutions differ from the convolution by their composed
      kernel near the borders (the intermediate map is zero-padded, not
      extended), so the DARTS double stack cannot collapse exactly.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: DARTS' primitive names, in DARTS' order.
PRIMITIVES: Tuple[str, ...] = ('none', 'max_pool_3x3', 'avg_pool_3x3',
                               'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                               'dil_conv_3x3', 'dil_conv_5x5')
#: The primitives whose ``'linear'`` variant is a convolution (all but max-pool).
LINEAR_PRIMITIVES: Tuple[str, ...] = tuple(p for p in PRIMITIVES
                                           if p != 'max_pool_3x3')
OP_VARIANTS: Tuple[str, ...] = ('darts', 'linear')

# name -> (family, kernel size, dilation)
_SPECS: Dict[str, Tuple[str, int, int]] = {
    'none': ('none', 1, 1),
    'max_pool_3x3': ('max_pool', 3, 1),
    'avg_pool_3x3': ('avg_pool', 3, 1),
    'skip_connect': ('skip', 1, 1),
    'sep_conv_3x3': ('sep_conv', 3, 1),
    'sep_conv_5x5': ('sep_conv', 5, 1),
    'dil_conv_3x3': ('dil_conv', 3, 2),
    'dil_conv_5x5': ('dil_conv', 5, 2),
}


class CandidateOp(nn.Module):
    """A stride-1, 'same'-padded map from ``C`` to ``C`` channels (NCHW).

    Args:
        channels (int): Number of channels C.
    """

    #: Whether the op is a convolution, so :meth:`dense_kernel` exists.
    is_linear: bool = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @property
    def kernel_size(self) -> int:
        """Side of the op's receptive field (dilation expanded)."""
        return 1

    def dense_kernel(self) -> torch.Tensor:
        """The ``(C, C, k, k)`` kernel of the equivalent ``Conv2d(padding=k//2)``.

        It is built from the op's parameters with differentiable ops, so a
        kernel mixture can be trained through it.
        """
        raise RuntimeError(
            f'{type(self).__name__} is not linear and has no equivalent conv '
            "kernel; use op_variant='linear' and leave 'max_pool_3x3' out of "
            '`primitives` to make the cell collapsible.')

    def extra_repr(self) -> str:
        return f'channels={self.channels}'


class Zero(CandidateOp):
    """DARTS' ``none``: the zero map."""

    is_linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def dense_kernel(self) -> torch.Tensor:
        return torch.zeros(self.channels, self.channels, 1, 1)


class Identity(CandidateOp):
    """DARTS' ``skip_connect`` at stride 1."""

    is_linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def dense_kernel(self) -> torch.Tensor:
        return torch.eye(self.channels)[:, :, None, None]


class Pool(CandidateOp):
    """3x3 max or average pooling, optionally followed by ``BN(affine=False)``.

    Args:
        channels (int): Number of channels C.
        mode (str): ``'max'`` or ``'avg'``.
        count_include_pad (bool): Average over the zero padding too (a fixed
            box kernel) or over the valid pixels only (DARTS).
        with_bn (bool): Append a BN as DARTS' search cell does after pools.
    """

    def __init__(self, channels: int, mode: str, count_include_pad: bool = False,
                 with_bn: bool = False) -> None:
        super().__init__(channels)
        if mode == 'max':
            self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        elif mode == 'avg':
            self.pool = nn.AvgPool2d(3, stride=1, padding=1,
                                     count_include_pad=count_include_pad)
        else:
            raise ValueError(f"pool mode must be 'max' or 'avg', got {mode!r}.")
        self.bn = nn.BatchNorm2d(channels, affine=False) if with_bn else None
        self.is_linear = mode == 'avg' and count_include_pad and not with_bn

    @property
    def kernel_size(self) -> int:
        return 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return x if self.bn is None else self.bn(x)

    def dense_kernel(self) -> torch.Tensor:
        if not self.is_linear:
            return super().dense_kernel()
        return torch.eye(self.channels)[:, :, None, None].expand(
            -1, -1, 3, 3) / 9.


class DepthwisePointwise(nn.Module):
    """``[ReLU] -> depthwise kxk (dilated) -> pointwise 1x1 -> [BN]``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int,
                 nonlinear: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False) if nonlinear else None
        self.depthwise = nn.Conv2d(channels, channels, kernel_size,
                                   padding=dilation * (kernel_size - 1) // 2,
                                   dilation=dilation, groups=channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, affine=False) if nonlinear else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu is not None:
            x = self.relu(x)
        x = self.pointwise(self.depthwise(x))
        return x if self.bn is None else self.bn(x)

    def dense_kernel(self) -> torch.Tensor:
        dw = self.depthwise.weight[:, 0]  # (C, k, k)
        d = self.depthwise.dilation[0]
        k = dw.shape[-1]
        size = d * (k - 1) + 1
        if d > 1:
            expanded = dw.new_zeros(dw.shape[0], size, size)
            expanded[:, ::d, ::d] = dw
            dw = expanded
        # Pointwise after depthwise: K[o, i] = pw[o, i] * dw[i].
        return self.pointwise.weight[:, :, 0, 0, None, None] * dw[None]


class ConvOp(CandidateOp):
    """DARTS' ``sep_conv`` (``repeats=2``) and ``dil_conv`` (``repeats=1``).

    Args:
        channels (int): Number of channels C.
        kernel_size (int): Depthwise kernel size.
        dilation (int): Depthwise dilation.
        repeats (int): Number of stacked depthwise-pointwise units.
        nonlinear (bool): ReLU-Conv-BN units (DARTS) instead of bare convs.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int,
                 repeats: int, nonlinear: bool) -> None:
        super().__init__(channels)
        self.units = nn.Sequential(*[
            DepthwisePointwise(channels, kernel_size, dilation, nonlinear)
            for _ in range(repeats)
        ])
        self.is_linear = not nonlinear and repeats == 1
        self._kernel_size = dilation * (kernel_size - 1) + 1

    @property
    def kernel_size(self) -> int:
        return self._kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x)

    def dense_kernel(self) -> torch.Tensor:
        if not self.is_linear:
            return super().dense_kernel()
        return self.units[0].dense_kernel()


def build_op(name: str, channels: int, variant: str = 'darts') -> CandidateOp:
    """Build the candidate op ``name`` on ``channels`` channels.

    Args:
        name (str): One of :data:`PRIMITIVES`.
        channels (int): Number of channels (the LoRA rank, or its PC part).
        variant (str): ``'darts'`` or ``'linear'`` (see the module docstring).

    Returns:
        CandidateOp: The op.
    """
    if name not in _SPECS:
        raise KeyError(f'unknown NAS-LoRA primitive {name!r}; choose from '
                       f'{list(PRIMITIVES)}.')
    if variant not in OP_VARIANTS:
        raise ValueError(f'op_variant must be one of {list(OP_VARIANTS)}, '
                         f'got {variant!r}.')
    if int(channels) != channels or channels < 1:
        raise ValueError(f'candidate ops need >= 1 channels, got {channels}.')
    darts = variant == 'darts'
    family, k, d = _SPECS[name]
    if family == 'none':
        return Zero(channels)
    if family == 'skip':
        return Identity(channels)
    if family == 'max_pool':
        return Pool(channels, 'max', with_bn=darts)
    if family == 'avg_pool':
        return Pool(channels, 'avg', count_include_pad=not darts, with_bn=darts)
    repeats = 2 if family == 'sep_conv' and darts else 1
    return ConvOp(channels, k, d, repeats, nonlinear=darts)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square odd ``(..., k, k)`` kernel to ``(..., size, size)``."""
    k = kernel.shape[-1]
    if k > size or (size - k) % 2:
        raise ValueError(f'cannot centre a {k}x{k} kernel in {size}x{size}.')
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p)) if p else kernel


def kernel_size_of(name: str) -> int:
    """Receptive-field side of the primitive ``name`` (dilation expanded)."""
    family, k, d = _SPECS[name]
    return d * (k - 1) + 1

"""The DARTS candidate operations, on the r channels of a LoRA bottleneck.

Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019
(``operations.py``/``genotypes.py`` of the official code): the eight
primitives, stride 1, 'same' padding.

Three variants (``docs/nas_lora.md`` says when to use which):

``'darts'``
    As DARTS searches: convolutions are ReLU-Conv-BN, ``sep_conv`` is the
    double ReLU-depthwise-pointwise-BN stack, pooling is followed by a
    BN, every BN is ``affine=False``, and ``avg_pool_3x3`` excludes the
    padding from its count. Not linear, so it never collapses.
``'linear_bn'``
    Searchable *and* collapsible: every conv/pool op is a bare linear map
    followed by ``BN(affine=False)``, no ReLU; ``skip_connect`` and
    ``none`` as in DARTS. The BN makes each op's output scale fixed, so
    ``softmax(α)`` alone sets how much of each op the cell uses (α is
    identifiable). In eval mode a BN is an affine map of its running
    statistics, so every op but ``max_pool_3x3`` is a convolution plus a
    bias (:meth:`CandidateOp.affine_map`) and the whole cell folds into one.
``'linear'``
    No ReLU and no BN. Collapsible, but ``softmax(α)_i·K_i`` depends only
    on the product, so α can be traded against the op weights and carries
    no meaning; kept for the fused training path and old checkpoints.

The two linear variants change two things so that the collapse is exact
at the image (window) borders:

* ``avg_pool_3x3`` counts the zero padding (``count_include_pad=True``),
  i.e. it is the fixed box kernel ``1/9``; with ``False`` the divisor
  changes at the borders and no fixed kernel reproduces it.
* ``sep_conv`` is a *single* depthwise-pointwise stack. Two stacked
  zero-padded convolutions differ from the convolution by their composed
  kernel near the borders (the intermediate map is zero-padded, not
  extended), so the DARTS double stack cannot collapse exactly.

Every op takes an optional ``mask`` of the real (not window-padding)
positions: they are computed as if the padded positions were outside
the map (zero in, zero out, left out of every statistic), which is what
the op would compute on the unpadded grid.

Ops are found by name in :data:`CANDIDATE_OPS`, where the eight DARTS ops
are registered like any user op (the contract: ``docs/nas_lora.md``).
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import Registry

#: DARTS' primitive names, in DARTS' order.
PRIMITIVES: Tuple[str, ...] = ('none', 'max_pool_3x3', 'avg_pool_3x3',
                               'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                               'dil_conv_3x3', 'dil_conv_5x5')
#: Extra ops registered next to DARTS' for the op-set ablations (not in the default set).
EXTRA_PRIMITIVES: Tuple[str, ...] = ('sep_conv_7x7', 'conv_1x1')
#: The primitives that are affine in the linear variants (all but max-pool).
LINEAR_PRIMITIVES: Tuple[str, ...] = tuple(p for p in PRIMITIVES
                                           if p != 'max_pool_3x3')
OP_VARIANTS: Tuple[str, ...] = ('darts', 'linear_bn', 'linear')

#: An affine map ``y = conv(x, kernel, padding=k//2) + bias``; ``bias`` may be None.
AffineMap = Tuple[torch.Tensor, Optional[torch.Tensor]]

#: Candidate ops by name. An entry is a :class:`CandidateOp` subclass or a
#: function, called as ``entry(channels, variant)``; register your own with
#: ``@CANDIDATE_OPS.register_module()`` and list its name in ``primitives``.
CANDIDATE_OPS = Registry('NAS-LoRA candidate op')

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
    # Extras: a wider separable conv, and a dense 1x1 conv (depthwise 1x1 = a channel scale).
    'sep_conv_7x7': ('sep_conv', 7, 1),
    'conv_1x1': ('conv', 1, 1),
}


def apply_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero ``x`` (N, C, H, W) outside ``mask`` (N, 1, H, W); None keeps all."""
    return x if mask is None else x * mask.to(x.dtype)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose statistics and output cover the masked positions only.

    Without a mask it is ``nn.BatchNorm2d``. With one, training-mode mean
    and (biased) variance, and the running statistics (unbiased, as
    PyTorch keeps them), are taken over the real positions only, and the
    output is zero elsewhere.
    """

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        if not self.training and self.track_running_stats:
            return apply_mask(super().forward(x), mask)
        m = mask.to(torch.float32)
        count = m.sum()
        if count < 2:
            raise ValueError('MaskedBatchNorm2d needs more than 1 real position '
                             f'per channel, got {int(count)}.')
        xf = x.float()
        mean = (xf * m).sum((0, 2, 3)) / count
        centred = xf - mean[None, :, None, None]
        var = (centred.square() * m).sum((0, 2, 3)) / count
        if self.track_running_stats:
            self.num_batches_tracked += 1
            factor = (1. / float(self.num_batches_tracked)
                      if self.momentum is None else self.momentum)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1), factor)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return apply_mask(y, mask).to(x.dtype)

    def fold(self, kernel: torch.Tensor, bias: Optional[torch.Tensor]) -> AffineMap:
        """Compose this BN's eval-mode map after ``conv(·, kernel) + bias``."""
        inv = torch.rsqrt(self.running_var.to(kernel) + self.eps)
        mean = self.running_mean.to(kernel)  # device and dtype of the kernel
        shifted = -mean if bias is None else bias - mean
        return kernel * inv[:, None, None, None], shifted * inv


class CandidateOp(nn.Module):
    """A stride-1, 'same'-padded map from ``C`` to ``C`` channels (NCHW).

    A registered subclass is built as ``Op(channels, variant)``; it may
    ignore ``variant`` (see ``docs/nas_lora.md`` for the whole contract).

    Args:
        channels (int): Number of channels C.
        variant (str): The cell's ``op_variant``. Defaults to ``'darts'``.
    """

    #: Whether the op is a bare convolution (no BN), so :meth:`dense_kernel`
    #: reproduces it in training too and the fused path may mix it.
    is_linear: bool = False

    def __init__(self, channels: int, variant: str = 'darts') -> None:
        super().__init__()
        self.channels = channels
        self.variant = variant

    @property
    def kernel_size(self) -> int:
        """Side of the op's receptive field (dilation expanded)."""
        return 1

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def dense_kernel(self) -> torch.Tensor:
        """The ``(C, C, k, k)`` kernel of the equivalent ``Conv2d(padding=k//2)``.

        It is built from the op's parameters with differentiable ops, so a
        kernel mixture can be trained through it. Only for :attr:`is_linear` ops.
        """
        raise RuntimeError(
            f'{type(self).__name__} is not linear and has no equivalent conv '
            "kernel; use op_variant='linear_bn' and leave 'max_pool_3x3' out of "
            '`primitives` to make the cell collapsible.')

    def affine_map(self, dtype: torch.dtype = torch.float64) -> Optional[AffineMap]:
        """The op in eval mode as ``conv(x, kernel) + bias``, or None if it is not affine."""
        return (self.dense_kernel().to(dtype), None) if self.is_linear else None

    def extra_repr(self) -> str:
        return f'channels={self.channels}'


class Zero(CandidateOp):
    """DARTS' ``none``: the zero map."""

    is_linear = True

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.zeros_like(x)

    def dense_kernel(self) -> torch.Tensor:
        return torch.zeros(self.channels, self.channels, 1, 1)


class Identity(CandidateOp):
    """DARTS' ``skip_connect`` at stride 1."""

    is_linear = True

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return apply_mask(x, mask)

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
        self.mode = mode
        self.count_include_pad = count_include_pad
        self.bn = MaskedBatchNorm2d(channels, affine=False) if with_bn else None
        self.is_linear = mode == 'avg' and count_include_pad and not with_bn

    @property
    def kernel_size(self) -> int:
        return 3

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            x = self.pool(x)
        elif self.mode == 'max':  # padded positions must never win the max
            x = self.pool(x.masked_fill(~mask.bool(), float('-inf')))
            x = x.masked_fill(~mask.bool(), 0.)
        elif self.count_include_pad:
            x = self.pool(apply_mask(x, mask))
        else:  # divide by the real pixels under the window, as on the unpadded grid
            total = F.avg_pool2d(apply_mask(x, mask), 3, 1, 1, count_include_pad=True)
            count = F.avg_pool2d(mask.to(x.dtype), 3, 1, 1, count_include_pad=True)
            x = total / count.clamp_min(1e-12)
        x = apply_mask(x, mask)
        return x if self.bn is None else self.bn(x, mask)

    def _box(self) -> torch.Tensor:
        return torch.eye(self.channels)[:, :, None, None].expand(-1, -1, 3, 3) / 9.

    def dense_kernel(self) -> torch.Tensor:
        if not self.is_linear:
            return super().dense_kernel()
        return self._box()

    def affine_map(self, dtype: torch.dtype = torch.float64) -> Optional[AffineMap]:
        if self.mode != 'avg' or not self.count_include_pad:
            return None
        kernel = self._box().to(dtype)
        return (kernel, None) if self.bn is None else self.bn.fold(kernel, None)


class DepthwisePointwise(nn.Module):
    """``[ReLU] -> depthwise kxk (dilated) -> pointwise 1x1 -> [BN]``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int,
                 relu: bool, bn: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False) if relu else None
        self.depthwise = nn.Conv2d(channels, channels, kernel_size,
                                   padding=dilation * (kernel_size - 1) // 2,
                                   dilation=dilation, groups=channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = MaskedBatchNorm2d(channels, affine=False) if bn else None

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.relu is not None:
            x = self.relu(x)
        # Re-masked after every unit: a stacked conv must see zeros, not its
        # own spill-over, at the padded positions (as at a map border).
        x = apply_mask(self.pointwise(self.depthwise(apply_mask(x, mask))), mask)
        return x if self.bn is None else self.bn(x, mask)

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
        relu (bool): Start every unit with a ReLU (DARTS).
        bn (bool): End every unit with ``BN(affine=False)``.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int,
                 repeats: int, relu: bool, bn: bool) -> None:
        super().__init__(channels)
        self.units = nn.ModuleList(
            DepthwisePointwise(channels, kernel_size, dilation, relu, bn)
            for _ in range(repeats))
        self.is_linear = not relu and not bn and repeats == 1
        self._affine = not relu and repeats == 1
        self._kernel_size = dilation * (kernel_size - 1) + 1

    @property
    def kernel_size(self) -> int:
        return self._kernel_size

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for unit in self.units:
            x = unit(x, mask)
        return x

    def dense_kernel(self) -> torch.Tensor:
        if not self.is_linear:
            return super().dense_kernel()
        return self.units[0].dense_kernel()

    def affine_map(self, dtype: torch.dtype = torch.float64) -> Optional[AffineMap]:
        if not self._affine:
            return None
        unit = self.units[0]
        kernel = unit.dense_kernel().detach().to(dtype)
        return (kernel, None) if unit.bn is None else unit.bn.fold(kernel, None)


def _darts_op(name: str) -> Callable[[int, str], CandidateOp]:
    family, k, d = _SPECS[name]

    def build(channels: int, variant: str = 'darts') -> CandidateOp:
        darts, bn = variant == 'darts', variant != 'linear'
        if family == 'none':
            return Zero(channels)
        if family == 'skip':
            return Identity(channels)
        if family == 'max_pool':
            return Pool(channels, 'max', with_bn=bn)
        if family == 'avg_pool':
            return Pool(channels, 'avg', count_include_pad=not darts, with_bn=bn)
        repeats = 2 if family == 'sep_conv' and darts else 1
        return ConvOp(channels, k, d, repeats, relu=darts, bn=bn)

    build.__name__ = name
    build.__qualname__ = name
    return build


for _name in PRIMITIVES + EXTRA_PRIMITIVES:
    CANDIDATE_OPS.register_module(name=_name, module=_darts_op(_name))


def registered_ops() -> Tuple[str, ...]:
    """Names in :data:`CANDIDATE_OPS`: DARTS' eight, the extras, then user ops."""
    return tuple(CANDIDATE_OPS.module_dict)


def build_op(name: str, channels: int, variant: str = 'darts') -> CandidateOp:
    """Build the candidate op ``name`` on ``channels`` channels.

    Args:
        name (str): A name in :data:`CANDIDATE_OPS` (the DARTS ones are
            :data:`PRIMITIVES`).
        channels (int): Number of channels (the LoRA rank, or its PC part).
        variant (str): One of :data:`OP_VARIANTS` (see the module docstring).

    Returns:
        CandidateOp: The op.
    """
    factory = CANDIDATE_OPS.get(name)
    if factory is None:
        raise KeyError(f'unknown NAS-LoRA primitive {name!r}; registered: '
                       f'{list(registered_ops())}. Register an op with '
                       '@CANDIDATE_OPS.register_module() (docs/nas_lora.md).')
    if variant not in OP_VARIANTS:
        raise ValueError(f'op_variant must be one of {list(OP_VARIANTS)}, '
                         f'got {variant!r}.')
    if int(channels) != channels or channels < 1:
        raise ValueError(f'candidate ops need >= 1 channels, got {channels}.')
    op = factory(int(channels), variant)
    if name not in _SPECS:  # the package's ops are tested; probe only users' ops
        check_op_contract(name, op, int(channels))
    return op


def check_op_contract(name: str, op: nn.Module, channels: int) -> None:
    """Raise a clear error when the op ``name`` breaks the :class:`CandidateOp` contract.

    The op must be a :class:`CandidateOp` on ``channels`` channels, keep the
    ``(N, C, H, W)`` shape (with and without a ``mask``), and, when it says
    it :attr:`~CandidateOp.is_linear`, give a ``(C, C, k, k)`` odd kernel of
    its :attr:`~CandidateOp.kernel_size` that reproduces it.
    """
    where = f'NAS-LoRA candidate op {name!r} ({type(op).__name__})'
    if not isinstance(op, CandidateOp):
        raise TypeError(f'{where} must be a subclass of '
                        'mmseg_naslora.models.adapters.ops.CandidateOp.')
    if op.channels != channels:
        raise ValueError(f'{where} was built for {op.channels} channels, not {channels}.')
    size = op.kernel_size
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f'{where}: kernel_size must be an odd integer >= 1, got {size}.')
    was_training = op.training
    op.eval()  # a probe must not move BN statistics
    x = torch.randn(2, channels, 5, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    mask[..., 4:, :] = False

    def probe(fn: Callable, *args) -> torch.Tensor:
        try:
            with torch.no_grad():
                return fn(*args)
        except Exception as error:  # the op's own code failed
            raise RuntimeError(
                f'{where} failed on a (2, {channels}, 5, 6) probe'
                f'{" with a (2, 1, 5, 6) mask" if len(args) > 1 else ""}: '
                f'{type(error).__name__}: {error}') from error

    try:
        for args in ((x, ), (x, mask)):
            out = probe(op, *args)
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                raise ValueError(f'{where} must map (N, C, H, W) to the same shape with '
                                 'stride 1 and same padding; got '
                                 f'{getattr(out, "shape", type(out).__name__)} for '
                                 f'{tuple(x.shape)}.')
        if op.is_linear:
            kernel = probe(op.dense_kernel)
            if tuple(kernel.shape) != (channels, channels, size, size):
                raise ValueError(f'{where}: dense_kernel() must be (C, C, k, k) = '
                                 f'{(channels, channels, size, size)}, got '
                                 f'{tuple(kernel.shape)}.')
            conv = F.conv2d(x, kernel.to(x), padding=size // 2)
            if (conv - probe(op, x)).abs().max() > 1e-4 * (1 + conv.abs().max()):
                raise ValueError(f'{where} says is_linear but its dense_kernel() does not '
                                 'reproduce its output.')
    finally:
        op.train(was_training)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square odd ``(..., k, k)`` kernel to ``(..., size, size)``."""
    k = kernel.shape[-1]
    if k > size or (size - k) % 2:
        raise ValueError(f'cannot centre a {k}x{k} kernel in {size}x{size}.')
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p)) if p else kernel

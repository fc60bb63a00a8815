"""NAS-LoRA: a differentiable DARTS cell inside the LoRA bottleneck.

Chen et al., "NAS-LoRA: Empowering Parameter-Efficient Fine-Tuning for
Visual Foundation Models with Searchable Adaptation", 2025
(arXiv:2512.03499). The bottleneck ``z = A·x`` is seen as an r-channel map
on the token grid (per window in SAM's windowed blocks) and goes through
the DARTS mixed op ``Σ_i softmax(α)_i·O_i(z)`` (Liu et al., DARTS, ICLR 2019)
before ``B``. NAS-PC-LoRA sends only part of the channels through the mixed
op and shuffles them with the rest, as PC-DARTS does (Xu et al., "PC-DARTS:
Partial Channel Connections for Memory-Efficient Architecture Search",
ICLR 2020).

Export ("no decoding, no re-training"): a cell whose ops are all linear
collapses into one ``r x r`` convolution (:meth:`NASLoRA.collapse`, giving a
:class:`ConvBottleneckLoRA`); otherwise the top-k ops can be kept
(:meth:`NASLoRA.prune_topk`).
"""
import copy
import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from .arch import ALPHA_MARKER
from .lora import LoRA
from .ops import (OP_VARIANTS, PRIMITIVES, CandidateOp, Zero, build_op,
                  pad_kernel)

PC_CHANNEL_CHOICES = ('fixed', 'random')
#: Above this many mixed channels the per-op loop is faster than one fused conv.
FUSED_MAX_CHANNELS = 16


def num_mixed_channels(rank: int, pc_ratio: float) -> int:
    """``ceil(pc_ratio·rank)``, the channels NAS-PC-LoRA sends through the ops."""
    # The tolerance keeps ratios such as 2/3 from rounding up past P·r.
    return math.ceil(pc_ratio * rank - 1e-9)


def channel_shuffle_order(num_mixed: int, num_channels: int) -> List[int]:
    """Output channel order of the PC shuffle, as indices into ``[mixed, bypass]``.

    PC-DARTS concatenates the ``C/k`` processed channels with the bypassed
    ones and calls ``channel_shuffle(x, groups=k)``. Here the two groups
    (mixed ``m`` and bypass ``b``) generally differ in size, so the shuffle
    is the groups=2 interleave ``m0, b0, m1, b1, ...`` with the leftover of
    the larger group appended in order. For equal halves this is exactly
    ``channel_shuffle(x, groups=2)``.

    Args:
        num_mixed (int): Channels that went through the mixed op (first).
        num_channels (int): All channels.

    Returns:
        list[int]: ``order`` such that ``out = x[:, order]``.
    """
    mixed = list(range(num_mixed))
    bypass = list(range(num_mixed, num_channels))
    order = []
    for i in range(max(len(mixed), len(bypass))):
        order += mixed[i:i + 1] + bypass[i:i + 1]
    return order


def _check_primitives(primitives: Sequence[str], key: str) -> List[str]:
    if isinstance(primitives, str) or not isinstance(primitives, Sequence):
        raise TypeError(f'`{key}` must be a list of op names, got '
                        f'{primitives!r}.')
    primitives = list(primitives)
    if not primitives:
        raise ValueError(f'`{key}` is empty; give at least one of '
                         f'{list(PRIMITIVES)}.')
    unknown = [p for p in primitives if p not in PRIMITIVES]
    if unknown:
        raise KeyError(f'unknown primitives {unknown} in `{key}`; choose from '
                       f'{list(PRIMITIVES)}.')
    if len(set(primitives)) != len(primitives):
        raise ValueError(f'`{key}` lists an op twice: {primitives}.')
    return primitives


@MODELS.register_module()
class NASLoRA(LoRA):
    """LoRA whose bottleneck is a DARTS mixed op over the candidate ops.

    ``h = W0·x + s·B(cell(A·x))`` with ``cell(z) = Σ_i softmax(α)_i·O_i(z)``
    on the ``(N, r, H, W)`` map of ``z``. ``B`` starts at zero, so the layer
    starts equal to ``W0`` and ``∂L/∂α`` is exactly zero until ``B`` moves.

    NAS-PC-LoRA (``pc_ratio < 1``): ``c = ceil(pc_ratio·r)`` channels go
    through the mixed op (built on c channels), the other ``r - c`` bypass
    it, and the r outputs are reordered by :func:`channel_shuffle_order`.
    With ``pc_channel_choice='random'`` every training forward picks a new
    random subset of c channels; each result is written back to its own
    channel slot (bypassed slots keep ``z``), then the same fixed shuffle is
    applied, so ``B`` always sees channel j in the same position. Evaluation
    uses the first c channels, as ``'fixed'`` does.

    The architecture weights are the parameter ``nas_alpha`` (see
    :data:`ALPHA_MARKER`), one entry per primitive, initialised
    ``1e-3·randn``.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt.
        rank (int): Bottleneck rank r. Defaults to 3.
        alpha (float): LoRA scaling numerator (scale alpha / r). Defaults to 32.
        dropout (float): Dropout on the branch output. Defaults to 0.
        primitives (Sequence[str]): Candidate op names, a subset of
            :data:`~.ops.PRIMITIVES`. Defaults to all eight.
        op_variant (str): ``'darts'`` (ReLU-Conv-BN, the DARTS search ops)
            or ``'linear'`` (no ReLU/BN; collapsible unless max-pool is
            present). See :mod:`.ops`. Defaults to ``'darts'``.
        residual (bool): Use ``z + cell(z)``. Defaults to False.
        share_alpha (bool): Tie one α over all adapters of one injection.
            Defaults to False.
        pc_ratio (float): Fraction P in (0, 1] of channels through the mixed
            op; 1 is plain NAS-LoRA. ``P·r`` must be >= 1. Defaults to 1.
        pc_channel_choice (str): ``'fixed'`` (first c channels) or
            ``'random'`` (a new subset per training forward). Defaults to
            ``'fixed'``.
        fused (bool, optional): Run the linear ops as one convolution by
            their mixed kernel (exact, and differentiable in α and the op
            weights). None picks it when the cell has >= 2 linear convs
            and at most :data:`FUSED_MAX_CHANNELS` mixed channels (see
            ``docs/nas_lora.md`` for the timing). Defaults to None.
        layer_primitives (list[list[str]], optional): Per adapted layer, in
            injection order, the subset of ``primitives`` it keeps (written
            by ``tools/export.py --mode topk``). Defaults to None.
    """

    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 alpha: float = 32.,
                 dropout: float = 0.,
                 primitives: Sequence[str] = PRIMITIVES,
                 op_variant: str = 'darts',
                 residual: bool = False,
                 share_alpha: bool = False,
                 pc_ratio: float = 1.,
                 pc_channel_choice: str = 'fixed',
                 fused: Optional[bool] = None,
                 layer_primitives: Optional[Sequence[Sequence[str]]] = None
                 ) -> None:
        super().__init__(base_layer, rank=rank, alpha=alpha, dropout=dropout)
        if op_variant not in OP_VARIANTS:
            raise ValueError(f'NASLoRA op_variant must be one of '
                             f'{list(OP_VARIANTS)}, got {op_variant!r}.')
        if pc_channel_choice not in PC_CHANNEL_CHOICES:
            raise ValueError(f'NASLoRA pc_channel_choice must be one of '
                             f'{list(PC_CHANNEL_CHOICES)}, got '
                             f'{pc_channel_choice!r}.')
        if not 0. < pc_ratio <= 1.:
            raise ValueError(f'NASLoRA pc_ratio must be in (0, 1], got '
                             f'{pc_ratio}.')
        if pc_ratio * self.rank < 1 - 1e-9:
            raise ValueError(
                f'NASLoRA pc_ratio * rank = {pc_ratio} * {self.rank} < 1 sends '
                'no channel through the ops; raise pc_ratio to at least '
                f'1/{self.rank} or raise the rank.')
        if fused not in (None, True, False):
            raise ValueError(f'NASLoRA fused must be None, True or False, '
                             f'got {fused!r}.')
        self.primitives = _check_primitives(primitives, 'primitives')
        self.op_variant = op_variant
        self.residual = bool(residual)
        self.share_alpha = bool(share_alpha)
        self.pc_ratio = float(pc_ratio)
        self.pc_channel_choice = pc_channel_choice
        self.fused = fused
        self.layer_primitives = None if layer_primitives is None else [
            _check_primitives(p, f'layer_primitives[{i}]')
            for i, p in enumerate(layer_primitives)
        ]
        self.num_mixed = num_mixed_channels(self.rank, self.pc_ratio)
        self.ops = nn.ModuleList(
            build_op(p, self.num_mixed, op_variant) for p in self.primitives)
        self.nas_alpha = nn.Parameter(1e-3 * torch.randn(len(self.primitives)))
        self.register_buffer(
            'shuffle_order',
            torch.tensor(channel_shuffle_order(self.num_mixed, self.rank)),
            persistent=False)

    # Cross-layer state -----------------------------------------------------
    @classmethod
    def after_inject(cls, adapters: List['LoRA']) -> None:
        """Apply ``layer_primitives`` and tie α when ``share_alpha``."""
        first = adapters[0]
        if first.layer_primitives is not None:
            if len(first.layer_primitives) != len(adapters):
                raise ValueError(
                    f'NASLoRA layer_primitives has {len(first.layer_primitives)}'
                    f' entries but {len(adapters)} layers were adapted; give '
                    'one list per adapted layer (in model order).')
            for adapter, names in zip(adapters, first.layer_primitives):
                adapter.restrict_primitives(names)
        if first.share_alpha:
            for adapter in adapters[1:]:
                if adapter.primitives != first.primitives:
                    raise ValueError(
                        'share_alpha=True needs the same primitives in every '
                        f'layer, got {first.primitives} and '
                        f'{adapter.primitives}.')
                adapter.nas_alpha = first.nas_alpha

    def restrict_primitives(self, names: Sequence[str]) -> None:
        """Keep only the ops ``names`` (with their weights and α entries)."""
        names = _check_primitives(names, 'primitives to keep')
        missing = [n for n in names if n not in self.primitives]
        if missing:
            raise KeyError(f'cannot keep {missing}: this NASLoRA has only '
                           f'{self.primitives}.')
        index = [self.primitives.index(n) for n in names]
        self.ops = nn.ModuleList(self.ops[i] for i in index)
        self.nas_alpha = nn.Parameter(
            self.nas_alpha.detach()[index].clone(),
            requires_grad=self.nas_alpha.requires_grad)
        self.primitives = names

    # Forward -----------------------------------------------------------------
    def arch_weights(self) -> torch.Tensor:
        """``softmax(α)``, detached, in the order of :attr:`primitives`."""
        return F.softmax(self.nas_alpha.detach(), dim=-1)

    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        x = z.permute(0, 3, 1, 2)
        y = self._partial_cell(x)
        if self.residual:
            y = x + y
        return y.permute(0, 2, 3, 1)

    def _partial_cell(self, x: torch.Tensor) -> torch.Tensor:
        c = self.num_mixed
        if c == self.rank:
            return self.mixed_op(x)
        if self.training and self.pc_channel_choice == 'random':
            # CPU draw: activation checkpointing restores the CPU RNG on
            # recompute, so the recomputed forward picks the same channels.
            chosen = torch.randperm(self.rank)[:c].sort().values.to(x.device)
            y = x.index_copy(1, chosen, self.mixed_op(x.index_select(1, chosen)))
        else:
            y = torch.cat([self.mixed_op(x[:, :c]), x[:, c:]], dim=1)
        return y.index_select(1, self.shuffle_order)

    def mixed_op(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_i softmax(α)_i·O_i(x)`` on ``(N, c, H, W)``; ``none`` is skipped."""
        weights = F.softmax(self.nas_alpha, dim=-1).to(x.dtype)
        linear = [i for i, op in enumerate(self.ops)
                  if op.is_linear and not isinstance(op, Zero)]
        out = None
        if self._use_fused(linear):
            kernel = self._mix_kernels(weights, linear, x.dtype)
            out = F.conv2d(x, kernel.to(x.device),
                           padding=kernel.shape[-1] // 2)
            loop = [i for i in range(len(self.ops)) if i not in linear]
        else:
            loop = range(len(self.ops))
        for i in loop:
            if isinstance(self.ops[i], Zero):
                continue
            term = weights[i] * self.ops[i](x)
            out = term if out is None else out + term
        return torch.zeros_like(x) if out is None else out

    def _use_fused(self, linear: List[int]) -> bool:
        if self.fused is not None:
            return self.fused and bool(linear)
        # Measured on CPU (docs/nas_lora.md): one dense kxk conv beats the
        # per-op loop up to about 16 channels, then its c^2·k^2 cost wins.
        convs = sum(self.ops[i].kernel_size > 1 for i in linear)
        return convs >= 2 and self.num_mixed <= FUSED_MAX_CHANNELS

    def _mix_kernels(self, weights: torch.Tensor, index: Sequence[int],
                     dtype: torch.dtype) -> torch.Tensor:
        size = max([self.ops[i].kernel_size for i in index] or [1])
        kernel = None
        for i in index:
            op: CandidateOp = self.ops[i]
            term = weights[i].to(dtype) * pad_kernel(
                op.dense_kernel().to(weights.device, dtype), size)
            kernel = term if kernel is None else kernel + term
        if kernel is None:
            kernel = weights.new_zeros(self.num_mixed, self.num_mixed, 1, 1,
                                       dtype=dtype)
        return kernel

    # Export ------------------------------------------------------------------
    @property
    def collapsible(self) -> bool:
        """Whether every op is a convolution, so the cell is one conv."""
        return all(op.is_linear for op in self.ops)

    @property
    def kernel_size(self) -> int:
        """Side of the collapsed kernel (the largest op's receptive field)."""
        sizes = [op.kernel_size for op in self.ops if not isinstance(op, Zero)]
        return max(sizes, default=1)

    @property
    def token_wise(self) -> bool:
        """Whether the cell is a 1x1 linear map (skip/none ops only).

        Such a cell folds into ``W0`` (:meth:`delta_weight`, used by
        ``tools/export.py --mode fold``). It stays non-``mergeable`` in
        :class:`LoRA`'s sense, whose forward skips the bottleneck of a
        mergeable adapter.
        """
        return self.collapsible and self.kernel_size == 1

    @torch.no_grad()
    def collapsed_kernel(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The ``(r, r, k, k)`` kernel of the whole bottleneck in eval mode.

        ``K = Σ_i p_i·K_i`` (kernels centred in the largest one) on the mixed
        channels, a centre delta on the bypassed ones, rows in the shuffled
        order, plus a centre delta for the residual.
        """
        if not self.collapsible:
            bad = [p for p, op in zip(self.primitives, self.ops)
                   if not op.is_linear]
            raise RuntimeError(
                f'NASLoRA cell with {bad} is not linear and cannot collapse '
                f"(op_variant={self.op_variant!r}); use op_variant='linear' "
                "without 'max_pool_3x3', or export with --mode topk.")
        weights = F.softmax(self.nas_alpha.detach().to(dtype), dim=-1)
        k = self.kernel_size
        linear = [i for i, op in enumerate(self.ops) if not isinstance(op, Zero)]
        mixed = self._mix_kernels(weights, linear, dtype)
        mixed = pad_kernel(mixed, k)
        c, r, centre = self.num_mixed, self.rank, k // 2
        kernel = weights.new_zeros(r, r, k, k)
        kernel[:c, :c] = mixed
        for j in range(c, r):
            kernel[j, j, centre, centre] = 1.
        kernel = kernel[self.shuffle_order.to(kernel.device)]
        if self.residual:
            kernel[range(r), range(r), centre, centre] += 1.
        return kernel

    def collapse(self) -> 'ConvBottleneckLoRA':
        """The equivalent :class:`ConvBottleneckLoRA` (eval-mode behaviour).

        It shares :attr:`base_layer` and copies ``A``, ``B`` and the scale.
        """
        kernel = self.collapsed_kernel()
        weight = self.lora_A.weight
        out = ConvBottleneckLoRA(self.base_layer, rank=self.rank,
                                 alpha=self.scaling * self.rank,
                                 dropout=_dropout_p(self.dropout),
                                 kernel_size=kernel.shape[-1])
        out.scaling = self.scaling
        out.grid_size = self.grid_size
        with torch.no_grad():
            out.lora_A.weight.copy_(self.lora_A.weight)
            out.lora_B.weight.copy_(self.lora_B.weight)
            out.conv.weight.copy_(kernel)
        return out.to(device=weight.device, dtype=weight.dtype).train(self.training)

    def prune_topk(self, k: int) -> 'NASLoRA':
        """A copy that keeps the k ops of largest ``softmax(α)``.

        The kept α entries (hence the softmax renormalised over them) and the
        kept ops' weights are copied; ``'none'`` competes like any other op.
        """
        if int(k) != k or not 1 <= k <= len(self.primitives):
            raise ValueError(f'topk must be an integer in [1, '
                             f'{len(self.primitives)}], got {k}.')
        keep = torch.topk(self.nas_alpha.detach(), int(k)).indices.sort().values
        pruned = copy.deepcopy(self)
        pruned.restrict_primitives([self.primitives[i] for i in keep.tolist()])
        pruned.share_alpha = False
        pruned.layer_primitives = None
        return pruned

    def delta_weight(self) -> torch.Tensor:
        """``s·B·M·A`` for a cell that is a 1x1 map ``M`` (see :attr:`token_wise`)."""
        if not self.token_wise:
            raise RuntimeError(f'this NASLoRA cell ({self.primitives}) mixes '
                               'neighbouring tokens; it has no dense update.')
        mix = self.collapsed_kernel(torch.float32)[:, :, 0, 0].to(
            self.lora_A.weight.device)
        return (self.lora_B.weight.float() @ mix @ self.lora_A.weight.float()
                ) * self.scaling

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, primitives={self.primitives}, '
                f'op_variant={self.op_variant}, residual={self.residual}, '
                f'pc_ratio={self.pc_ratio:g} ({self.num_mixed}/{self.rank} '
                f'channels, {self.pc_channel_choice})')


@MODELS.register_module()
class NASPCLoRA(NASLoRA):
    """NAS-PC-LoRA: :class:`NASLoRA` with ``pc_ratio=2/3`` by default.

    2/3 is the partial-channel ratio the NAS-LoRA paper reports best (1/3
    and 3/3 are worse). All arguments are those of :class:`NASLoRA`.
    """

    def __init__(self, base_layer: nn.Linear, pc_ratio: float = 2 / 3,
                 **kwargs) -> None:
        super().__init__(base_layer, pc_ratio=pc_ratio, **kwargs)


@MODELS.register_module()
class ConvBottleneckLoRA(LoRA):
    """LoRA with one ``r -> r`` convolution in the bottleneck.

    ``h = W0·x + s·B(conv(A·x))``; the inference form of a collapsed
    NAS-LoRA cell (written by ``tools/export.py --mode collapse``). The
    conv starts as the identity (Dirac), i.e. as plain LoRA.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt.
        rank (int): Bottleneck rank r. Defaults to 3.
        alpha (float): LoRA scaling numerator (scale alpha / r). Defaults to 32.
        dropout (float): Dropout on the branch output. Defaults to 0.
        kernel_size (int): Odd conv kernel side. Defaults to 3.
    """

    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 alpha: float = 32.,
                 dropout: float = 0.,
                 kernel_size: int = 3) -> None:
        super().__init__(base_layer, rank=rank, alpha=alpha, dropout=dropout)
        if int(kernel_size) != kernel_size or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError('ConvBottleneckLoRA kernel_size must be an odd '
                             f'integer >= 1, got {kernel_size}.')
        self.kernel_size = int(kernel_size)
        self.conv = nn.Conv2d(self.rank, self.rank, self.kernel_size,
                              padding=self.kernel_size // 2, bias=False)
        nn.init.dirac_(self.conv.weight)

    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    @property
    def token_wise(self) -> bool:
        """Whether the conv is 1x1, so :meth:`delta_weight` folds it into ``W0``."""
        return self.kernel_size == 1

    def delta_weight(self) -> torch.Tensor:
        """``s·B·M·A`` for a 1x1 conv ``M``."""
        if not self.token_wise:
            raise RuntimeError('a ConvBottleneckLoRA with kernel_size > 1 mixes '
                               'neighbouring tokens; it has no dense update.')
        mix = self.conv.weight[:, :, 0, 0].float()
        return (self.lora_B.weight.float() @ mix @ self.lora_A.weight.float()
                ) * self.scaling

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, kernel_size={self.kernel_size}'


def _dropout_p(dropout: nn.Module) -> float:
    return dropout.p if isinstance(dropout, nn.Dropout) else 0.

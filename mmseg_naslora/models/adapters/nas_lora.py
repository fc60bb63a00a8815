"""NAS-LoRA: a differentiable DARTS cell inside the LoRA bottleneck.

Chen et al., "NAS-LoRA: Empowering Parameter-Efficient Fine-Tuning for
Visual Foundation Models with Searchable Adaptation", 2025
(arXiv:2512.03499). The bottleneck ``z = A·x`` is seen as an r-channel map
on the token grid (per window in SAM's windowed blocks) and goes through
the DARTS mixed op ``Σ_i softmax(α)_i·O_i(z)`` (Liu et al., DARTS, ICLR 2019)
before ``B``. NAS-PC-LoRA sends only part of the channels through the mixed
op, as PC-DARTS does (Xu et al., "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020).

Export ("no decoding, no re-training"): a cell whose ops are all affine in
eval mode (``op_variant='linear_bn'`` or ``'linear'`` without max-pool) is
one ``r x r`` convolution plus a bias (:meth:`NASLoRA.bottleneck_map`,
collapsed by ``tools/export.py --mode collapse``); any cell can keep its
top-k ops at their trained weights (:meth:`NASLoRA.prune_topk`).
"""
import copy
import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from .lora import BottleneckMap, LoRA, accepts_deprecated_alpha
from .ops import (CANDIDATE_OPS, OP_VARIANTS, PRIMITIVES, CandidateOp, Zero, build_op,
                  pad_kernel, registered_ops)

PC_CHANNEL_CHOICES = ('fixed', 'random')
#: Above this many mixed channels the per-op loop is faster than one fused conv.
FUSED_MAX_CHANNELS = 16


def num_mixed_channels(rank: int, pc_ratio: float) -> int:
    """``ceil(pc_ratio·rank)``, the channels NAS-PC-LoRA sends through the ops."""
    # The tolerance keeps ratios such as 2/3 from rounding up past P·r.
    return math.ceil(pc_ratio * rank - 1e-9)


def _check_primitives(primitives: Sequence[str], key: str) -> List[str]:
    if isinstance(primitives, str) or not isinstance(primitives, Sequence):
        raise TypeError(f'`{key}` must be a list of op names, got '
                        f'{primitives!r}.')
    primitives = list(primitives)
    if not primitives:
        raise ValueError(f'`{key}` is empty; give at least one of '
                         f'{list(registered_ops())}.')
    unknown = [p for p in primitives if CANDIDATE_OPS.get(p) is None]
    if unknown:
        raise KeyError(f'unknown primitives {unknown} in `{key}`; choose from '
                       f'{list(registered_ops())} or register your own op '
                       '(docs/nas_lora.md, "Your own candidate ops").')
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
    through the mixed op (built on c channels) and the other ``r - c``
    bypass it. PC-DARTS then shuffles the channels so that the *next* cell
    samples other ones; here the next layer is the dense, zero-initialised
    ``B``, which absorbs any fixed permutation, so no shuffle is applied.
    With ``pc_channel_choice='random'`` every training forward picks a new
    random subset of c channels and evaluation uses the first c. That is
    only consistent for ops without statistics (``op_variant='linear'``):
    one BN would otherwise average over whichever subsets were drawn.

    The architecture weights are the parameter ``nas_alpha`` (see
    :mod:`.arch`), one entry per primitive, initialised ``1e-3·randn``.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt.
        rank (int): Bottleneck rank r. Defaults to 3.
        lora_alpha (float): LoRA scaling numerator (scale lora_alpha / r).
            Defaults to 32.
        dropout (float): Dropout on the branch output. Defaults to 0.
        primitives (Sequence[str]): Candidate op names in
            :data:`~.ops.CANDIDATE_OPS` (the DARTS eight are
            :data:`~.ops.PRIMITIVES`, the default).
        op_variant (str): ``'darts'`` (ReLU-Conv-BN, the DARTS search ops),
            ``'linear_bn'`` (linear ops + BN: searchable and collapsible
            without max-pool) or ``'linear'`` (no ReLU/BN). See :mod:`.ops`.
            Defaults to ``'darts'``.
        residual (bool): Use ``z + cell(z)``. Defaults to False.
        share_alpha (bool): Tie one α over all adapters of one injection.
            Defaults to False.
        pc_ratio (float): Fraction P in (0, 1] of channels through the mixed
            op; 1 is plain NAS-LoRA. ``P·r`` must be >= 1. Defaults to 1.
        pc_channel_choice (str): ``'fixed'`` (first c channels) or
            ``'random'`` (a new subset per training forward; ``'linear'``
            ops only). Defaults to ``'fixed'``.
        fused (bool, optional): Run the bare convolutions (``is_linear``
            ops) as one convolution by their mixed kernel (exact, and
            differentiable in α and the op weights). None picks it when the
            cell has >= 2 such convs and at most :data:`FUSED_MAX_CHANNELS`
            mixed channels (see ``docs/nas_lora.md``). Defaults to None.
        mask_padding (bool): Keep window-padding tokens out of the cell
            (see :class:`LoRA`). Defaults to True.
        layer_primitives (list[list[str]], optional): Per adapted layer, in
            injection order, the ops it keeps at their trained weights
            (written by ``tools/export.py --mode topk``). Defaults to None.
    """

    @accepts_deprecated_alpha
    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 lora_alpha: float = 32.,
                 dropout: float = 0.,
                 primitives: Sequence[str] = PRIMITIVES,
                 op_variant: str = 'darts',
                 residual: bool = False,
                 share_alpha: bool = False,
                 pc_ratio: float = 1.,
                 pc_channel_choice: str = 'fixed',
                 fused: Optional[bool] = None,
                 mask_padding: bool = True,
                 layer_primitives: Optional[Sequence[Sequence[str]]] = None
                 ) -> None:
        super().__init__(base_layer, rank=rank, lora_alpha=lora_alpha, dropout=dropout)
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
        if pc_channel_choice == 'random' and pc_ratio < 1 and op_variant != 'linear':
            raise ValueError(
                f"NASLoRA pc_channel_choice='random' with op_variant={op_variant!r}: "
                'its BatchNorms would keep one set of running statistics for '
                'whichever channels each step drew, while evaluation always feeds '
                "the first ones; use pc_channel_choice='fixed', or op_variant='linear' "
                '(no statistics).')
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
        self.mask_padding = bool(mask_padding)
        self.layer_primitives = None if layer_primitives is None else [
            _check_primitives(p, f'layer_primitives[{i}]')
            for i, p in enumerate(layer_primitives)
        ]
        self.num_mixed = num_mixed_channels(self.rank, self.pc_ratio)
        self.ops = nn.ModuleList(
            build_op(p, self.num_mixed, op_variant) for p in self.primitives)
        self.nas_alpha = nn.Parameter(1e-3 * torch.randn(len(self.primitives)))
        # log Σ exp(α) of the ops a top-k export dropped: their share of the
        # softmax stays out of the kept ops' weights (None: nothing dropped).
        self.register_buffer('dropped_logit', None)

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
                adapter.restrict_primitives(names, keep_weights=True)
        if first.share_alpha:
            for adapter in adapters[1:]:
                if adapter.primitives != first.primitives:
                    raise ValueError(
                        'share_alpha=True needs the same primitives in every '
                        f'layer, got {first.primitives} and '
                        f'{adapter.primitives}.')
                adapter.nas_alpha = first.nas_alpha

    def restrict_primitives(self, names: Sequence[str], keep_weights: bool = False) -> None:
        """Keep only the ops ``names`` (with their weights and α entries).

        Args:
            names (Sequence[str]): Ops to keep.
            keep_weights (bool): Keep the kept ops at their present
                ``softmax(α)`` weights (the dropped ops' share is remembered
                in ``dropped_logit``) instead of renormalising over them.
        """
        names = _check_primitives(names, 'primitives to keep')
        missing = [n for n in names if n not in self.primitives]
        if missing:
            raise KeyError(f'cannot keep {missing}: this NASLoRA has only '
                           f'{self.primitives}.')
        index = [self.primitives.index(n) for n in names]
        alpha = self.nas_alpha.detach()
        if keep_weights:
            dropped = [alpha[i].view(1) for i in range(len(alpha)) if i not in index]
            if self.dropped_logit is not None:
                dropped.append(self.dropped_logit.view(1))
            if dropped:
                self.dropped_logit = torch.cat(dropped).logsumexp(0)
        self.ops = nn.ModuleList(self.ops[i] for i in index)
        self.nas_alpha = nn.Parameter(alpha[index].clone(),
                                      requires_grad=self.nas_alpha.requires_grad)
        self.primitives = names

    # Forward -----------------------------------------------------------------
    def op_weights(self) -> torch.Tensor:
        """The mixing weights ``softmax(α)`` (with any dropped share), differentiable."""
        if self.dropped_logit is None:
            return F.softmax(self.nas_alpha, dim=-1)
        logits = torch.cat([self.nas_alpha, self.dropped_logit.to(self.nas_alpha).view(1)])
        return F.softmax(logits, dim=-1)[:-1]

    def arch_weights(self) -> torch.Tensor:
        """:meth:`op_weights`, detached, in the order of :attr:`primitives`."""
        return self.op_weights().detach()

    def bottleneck(self, z: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = z.permute(0, 3, 1, 2)
        m = None if mask is None else mask.permute(0, 3, 1, 2)
        y = self._partial_cell(x, m)
        if self.residual:
            y = x + y
        return y.permute(0, 2, 3, 1)

    def _partial_cell(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        c = self.num_mixed
        if c == self.rank:
            return self.mixed_op(x, mask)
        if self.training and self.pc_channel_choice == 'random':
            # CPU draw: activation checkpointing restores the CPU RNG on
            # recompute, so the recomputed forward picks the same channels.
            chosen = torch.randperm(self.rank)[:c].sort().values.to(x.device)
            return x.index_copy(1, chosen, self.mixed_op(x.index_select(1, chosen), mask))
        return torch.cat([self.mixed_op(x[:, :c], mask), x[:, c:]], dim=1)

    def mixed_op(self, x: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Σ_i w_i·O_i(x)`` on ``(N, c, H, W)`` (:meth:`op_weights`); ``none`` is skipped."""
        weights = self.op_weights().to(x.dtype)
        linear = [i for i, op in enumerate(self.ops)
                  if op.is_linear and not isinstance(op, Zero)]
        out = None
        if self._use_fused(linear):
            kernel = self._mix_kernels(weights, linear, x.dtype)
            out = F.conv2d(x, kernel.to(x.device), padding=kernel.shape[-1] // 2)
            loop = [i for i in range(len(self.ops)) if i not in linear]
        else:
            loop = range(len(self.ops))
        for i in loop:
            if isinstance(self.ops[i], Zero):
                continue
            term = weights[i] * self.ops[i](x, mask)
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
        return kernel

    # Export ------------------------------------------------------------------
    @torch.no_grad()
    def bottleneck_map(self, dtype: torch.dtype = torch.float64
                       ) -> Optional[BottleneckMap]:
        """The eval-mode cell as one convolution plus a bias, or None.

        ``K = Σ_i w_i·K_i`` and ``b = Σ_i w_i·b_i`` over the ops' eval-mode
        affine maps (each BN folded in), kernels centred in the largest one;
        a centre delta on the bypassed PC channels and for the residual.
        None when an op is not affine (see :meth:`nonlinear_primitives`).
        """
        maps = [op.affine_map(dtype) for op in self.ops]
        if any(m is None for m in maps):
            return None
        weights = self.op_weights().detach().to(dtype)
        used = [i for i, op in enumerate(self.ops) if not isinstance(op, Zero)]
        size = max([self.ops[i].kernel_size for i in used] or [1])
        c, r, centre = self.num_mixed, self.rank, size // 2
        kernel = weights.new_zeros(r, r, size, size)
        bias = weights.new_zeros(r)
        for i in used:
            op_kernel, op_bias = maps[i]
            kernel[:c, :c] += weights[i] * pad_kernel(op_kernel.to(weights), size)
            if op_bias is not None:
                bias[:c] += weights[i] * op_bias.to(weights)
        for j in range(c, r):
            kernel[j, j, centre, centre] = 1.
        if self.residual:
            kernel[range(r), range(r), centre, centre] += 1.
        has_bias = any(m[1] is not None for m in maps)
        return BottleneckMap(kernel, bias if has_bias else None)

    def nonlinear_primitives(self) -> List[str]:
        """The ops that are not affine in eval mode (what stops a collapse)."""
        return [p for p, op in zip(self.primitives, self.ops) if op.affine_map() is None]

    def prune_topk(self, k: int) -> 'NASLoRA':
        """A copy that keeps the k real ops of largest ``softmax(α)``.

        The kept ops stay at their trained weights (the dropped ops' share
        is not handed to them), and ``'none'`` is never kept: it contributes
        nothing, as in DARTS' genotype.
        """
        candidates = [i for i, op in enumerate(self.ops) if not isinstance(op, Zero)]
        if int(k) != k or not 1 <= k <= len(candidates):
            raise ValueError(f'topk must be an integer in [1, {len(candidates)}] '
                             f'(the ops other than none), got {k}.')
        alpha = self.nas_alpha.detach()[candidates]
        keep = sorted(candidates[i] for i in torch.topk(alpha, int(k)).indices.tolist())
        pruned = copy.deepcopy(self)
        pruned.restrict_primitives([self.primitives[i] for i in keep], keep_weights=True)
        pruned.share_alpha = False
        pruned.layer_primitives = None
        return pruned

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, primitives={self.primitives}, '
                f'op_variant={self.op_variant}, residual={self.residual}, '
                f'pc_ratio={self.pc_ratio:g} ({self.num_mixed}/{self.rank} '
                f'channels, {self.pc_channel_choice}), mask_padding={self.mask_padding}')


@MODELS.register_module()
class NASPCLoRA(NASLoRA):
    """NAS-PC-LoRA: :class:`NASLoRA` with ``pc_ratio=2/3`` by default.

    2/3 is the partial-channel ratio the NAS-LoRA paper reports best (1/3
    and 3/3 are worse). All arguments are those of :class:`NASLoRA`.
    """

    def __init__(self, base_layer: nn.Linear, pc_ratio: float = 2 / 3,
                 **kwargs) -> None:
        super().__init__(base_layer, pc_ratio=pc_ratio, **kwargs)

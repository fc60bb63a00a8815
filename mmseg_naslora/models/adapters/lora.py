"""LoRA on a frozen linear layer, with a replaceable bottleneck.

Conv-LoRA and NAS-LoRA differ from LoRA only in what happens to ``z = A·x``
inside the rank-r bottleneck, so they subclass :class:`LoRA` and override
:meth:`LoRA.bottleneck`. The layer owns its state, forward and merge; putting
it into a model is :mod:`.inject`'s job (the split follows peft's
``LoraLayer``/``LoraModel``).

Every bottleneck that is linear says so through :meth:`LoRA.bottleneck_map`
(a convolution plus a bias in eval mode). Merging into ``W0``
(:meth:`LoRA.merge`, ``tools/export.py --mode fold``) and collapsing into one
convolution (``--mode collapse``) are both read off that map.
"""
import functools
import math
import warnings
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from mmseg.registry import MODELS


def rename_deprecated_alpha(cfg: Mapping[str, Any], owner: str = 'LoRA') -> dict:
    """A copy of ``cfg`` whose ``alpha`` (the old name of ``lora_alpha``) is renamed.

    Args:
        cfg (Mapping): Adapter keyword arguments or config.
        owner (str): What ``cfg`` belongs to, for the error message.

    Raises:
        ValueError: ``cfg`` has both ``alpha`` and ``lora_alpha``.
    """
    cfg = dict(cfg)
    if 'alpha' not in cfg:
        return cfg
    if 'lora_alpha' in cfg:
        raise ValueError(
            f"{owner} got both lora_alpha={cfg['lora_alpha']} and alpha={cfg['alpha']}; "
            '`alpha` is the deprecated name of `lora_alpha`, give only `lora_alpha`. A '
            'config that sets `alpha` over a _base_ adapter with `lora_alpha` has both: '
            'rename its `alpha` to `lora_alpha`.')
    cfg['lora_alpha'] = cfg.pop('alpha')
    return cfg


def accepts_deprecated_alpha(init: Callable) -> Callable:
    """Let an adapter ``__init__`` take ``alpha=`` as ``lora_alpha=``, with a FutureWarning."""

    @functools.wraps(init)  # keeps the signature that adapter_file reads defaults from
    def wrapper(self, *args, **kwargs) -> None:
        if 'alpha' in kwargs:
            owner = type(self).__name__
            kwargs = rename_deprecated_alpha(kwargs, owner)
            # FutureWarning (shown by default, once per call site): configs are
            # written by users, whom a hidden DeprecationWarning would not reach.
            warnings.warn(f'{owner}: `alpha` is deprecated, use `lora_alpha` (the LoRA '
                          'scaling numerator, named as in peft); `alpha` will be removed.',
                          FutureWarning, stacklevel=2)
        init(self, *args, **kwargs)

    return wrapper


class BottleneckMap(NamedTuple):
    """A linear bottleneck: ``conv(z, kernel, padding=k // 2) + bias`` on ``(N, r, H, W)``.

    Args:
        kernel (Tensor): ``(r, r, k, k)``, odd ``k``.
        bias (Tensor, optional): ``(r, )``, or None for no bias.
    """

    kernel: torch.Tensor
    bias: Optional[torch.Tensor]

    @property
    def kernel_size(self) -> int:
        return self.kernel.shape[-1]

    @property
    def token_wise(self) -> bool:
        """Whether it is a 1x1 map, i.e. ``M·z + b`` at every token."""
        return self.kernel_size == 1


@MODELS.register_module()
class LoRA(nn.Module):
    """Low-rank adaptation ``h = W0·x + s·B(A·x)`` of a frozen ``nn.Linear``.

    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    ``A`` is Kaiming-uniform (as in peft; ``init_a``) and ``B`` zero, so the
    wrapped layer starts out exactly equal to the base layer.

    The input keeps its token-grid shape ``(N, H, W, C)`` (SAM ViT windows or
    global grids); a flat ``(N, L, C)`` input is viewed as a grid of
    :attr:`grid_size`, or as a square grid when that is unset.

    Prefix tokens: a backbone whose flat sequence starts with
    :attr:`prefix_tokens` non-grid tokens (a ViT's class token) sets that
    count; a spatial bottleneck then runs on the ``L - prefix_tokens`` grid
    tokens only and is the identity on the prefix ones (they still get
    ``s·B·A·x``). 0, the default, changes nothing.

    Window padding: the backbone sets :attr:`valid_size`, the size of the
    map that the windows tile. A spatial bottleneck with ``mask_padding``
    then sees zeros at the padded positions, leaves them out of its
    statistics and writes zeros there (:meth:`padding_mask`), so a real
    token's update is what it would be on the unpadded grid.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt (e.g. a fused qkv).
        rank (int): Bottleneck rank r. Defaults to 3.
        lora_alpha (float): Scaling numerator; the update is scaled by
            lora_alpha / r. Defaults to 32. ``alpha``, its old name, is still
            accepted with a FutureWarning (in every adapter of this family).
        dropout (float): Dropout on the LoRA branch output. Defaults to 0.
        init_a (str): How ``A`` is drawn: ``'kaiming'`` (Kaiming-uniform with
            ``a=√5``, standard deviation ``1/√(3·in)``, as peft) or ``'randn'``
            (``N(0, 1/r)``, as the SAM2LoRA reference code). Defaults to
            ``'kaiming'``.
    """

    @accepts_deprecated_alpha
    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 lora_alpha: float = 32.,
                 dropout: float = 0.,
                 init_a: str = 'kaiming') -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f'{type(self).__name__} adapts nn.Linear layers, '
                            f'got {type(base_layer).__name__}.')
        if int(rank) != rank or rank < 1:
            raise ValueError(f'LoRA rank must be an integer >= 1, got {rank}.')
        if not math.isfinite(float(lora_alpha)) or float(lora_alpha) == 0:
            # s = lora_alpha / r scales the update and both its gradients: with 0
            # the adapter output and its gradients are zero, so it never trains.
            raise ValueError(f'LoRA lora_alpha must be a finite non-zero number (the '
                             f'update is scaled by lora_alpha / rank), got {lora_alpha}; '
                             'the usual value is lora_alpha=32.')
        if not 0 <= float(dropout) < 1:
            raise ValueError(f'LoRA dropout must be in [0, 1), got {dropout}.')
        if init_a not in ('kaiming', 'randn'):
            raise ValueError(f"LoRA init_a must be 'kaiming' or 'randn', got {init_a!r}.")
        self.init_a = init_a
        self.base_layer = base_layer
        self.rank = int(rank)
        self.scaling = float(lora_alpha) / self.rank
        self.lora_A = nn.Linear(base_layer.in_features, self.rank, bias=False)
        self.lora_B = nn.Linear(self.rank, base_layer.out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.grid_size: Optional[Tuple[int, int]] = None
        self.valid_size: Optional[Tuple[int, int]] = None
        self.merged = False
        self.reset_parameters()
        base_layer.requires_grad_(False)

    def reset_parameters(self) -> None:
        if self.init_a == 'randn':
            nn.init.normal_(self.lora_A.weight, std=1 / math.sqrt(self.rank))
        else:
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

    #: Whether a spatial bottleneck keeps window padding out (see the class doc).
    mask_padding: bool = False
    #: Leading non-grid tokens of a flat input (e.g. 1 for a class token).
    prefix_tokens: int = 0

    def bottleneck(self, z: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Transform ``z = A·x`` of shape ``(N, H, W, r)``; identity here.

        Args:
            z (Tensor): The bottleneck map, zero at padded positions.
            mask (Tensor, optional): ``(N, H, W, 1)`` bool, True at real
                tokens; passed only when something is padded and
                :attr:`mask_padding` is set, so a subclass without masking may
                take ``z`` alone. The output is zeroed outside it afterwards;
                a bottleneck needs the mask only for statistics and for ops
                that do not map zeros to zeros.
        """
        return z

    def bottleneck_map(self, dtype: torch.dtype = torch.float64
                       ) -> Optional[BottleneckMap]:
        """The bottleneck as a linear map in eval mode, or None if it is not linear.

        The identity for LoRA; None for an overridden :meth:`bottleneck`
        unless the subclass says what it is by overriding this too.
        """
        if self.spatial:
            return None
        return BottleneckMap(torch.eye(self.rank, dtype=dtype)[:, :, None, None], None)

    @property
    def spatial(self) -> bool:
        """Whether the bottleneck is overridden, so it runs on the token grid."""
        return type(self).bottleneck is not LoRA.bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        z = self.lora_A(x.to(self.lora_A.weight.dtype))
        if self.spatial:
            prefix = None
            if self.prefix_tokens and z.dim() == 3:
                # The class token has no grid position: identity bottleneck.
                prefix, z = z[:, :self.prefix_tokens], z[:, self.prefix_tokens:]
            grid = self._to_grid(z)
            mask = self.padding_mask(grid) if self.mask_padding else None
            if mask is None:
                grid = self.bottleneck(grid)
            else:
                grid = self.bottleneck(grid * mask.to(grid.dtype), mask) * mask.to(grid.dtype)
            z = grid.reshape(z.shape)
            if prefix is not None:
                z = torch.cat((prefix, z), dim=1)
        return out + self.dropout(self.lora_B(z)).to(out.dtype) * self.scaling

    def padding_mask(self, grid: torch.Tensor) -> Optional[torch.Tensor]:
        """``(N, h, w, 1)`` bool, True at real tokens, for windows of :attr:`valid_size`.

        Windows are taken in ``window_partition`` order (batch, then window
        rows, then window columns) with the padding at the bottom and right,
        as SAM, SAM 2 and TinyViT pad. None when nothing is padded.
        """
        if self.valid_size is None:
            return None
        height, width = self.valid_size
        n, h, w = grid.shape[:3]
        rows, cols = -(-height // h), -(-width // w)
        if rows * h == height and cols * w == width:
            return None
        if n % (rows * cols):
            raise ValueError(
                f'{type(self).__name__}: {n} windows of {h}x{w} cannot tile a '
                f'{height}x{width} map ({rows}x{cols} windows per image); the '
                'backbone set a stale `valid_size`.')
        inside_h = torch.arange(rows * h, device=grid.device).view(rows, h) < height
        inside_w = torch.arange(cols * w, device=grid.device).view(cols, w) < width
        mask = inside_h[:, None, :, None] & inside_w[None, :, None, :]
        return mask.reshape(1, rows * cols, h, w, 1).expand(
            n // (rows * cols), -1, -1, -1, -1).reshape(n, h, w, 1)

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
        """Whether :meth:`merge` can fold the adapter into the base layer."""
        return self._merge_refusal() is None

    def _merge_refusal(self) -> Optional[str]:
        linear = self.bottleneck_map()
        if linear is None:
            return 'its bottleneck is not linear'
        if not linear.token_wise:
            return (f'its bottleneck is a {linear.kernel_size}x{linear.kernel_size} '
                    'map that mixes neighbouring tokens')
        if self.spatial and self.mask_padding:
            return ('it zeroes padded window tokens (mask_padding=True), which a '
                    'merged weight cannot do')
        if self.spatial and self.prefix_tokens:
            return (f'its bottleneck skips the {self.prefix_tokens} prefix (class) '
                    'token(s), which a merged weight cannot do')
        if linear.bias is not None and self.base_layer.bias is None:
            return 'its bottleneck has a bias and the base layer has none'
        return None

    def delta(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The dense update ``(s·B·M·A, s·B·b)`` of a token-wise map ``M·z + b``, fp32."""
        linear = self.bottleneck_map()
        if linear is None or not linear.token_wise:
            raise RuntimeError(f'{type(self).__name__}: {self._merge_refusal()}; '
                               'it has no dense update.')
        lora_b = self.lora_B.weight.double()
        weight = lora_b @ linear.kernel[:, :, 0, 0].to(lora_b) @ self.lora_A.weight.double()
        bias = None if linear.bias is None else lora_b @ linear.bias.to(lora_b)
        return ((weight * self.scaling).float(),
                None if bias is None else (bias * self.scaling).float())

    def delta_weight(self) -> torch.Tensor:
        """The weight part of :meth:`delta`, shaped like the base weight."""
        return self.delta()[0]

    def merge(self) -> None:
        """Fold the update into the base layer; the forward then skips the branch."""
        if self.merged:
            return
        refusal = self._merge_refusal()
        if refusal is not None:
            raise RuntimeError(
                f'{type(self).__name__} cannot be folded into the linear layer: '
                f'{refusal}; use tools/export.py --mode collapse instead.')
        self._add_to_base(*self.delta())
        self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge`, restoring the base layer."""
        if not self.merged:
            return
        weight, bias = self.delta()
        self._add_to_base(-weight, None if bias is None else -bias)
        self.merged = False

    def _add_to_base(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, delta in ((self.base_layer.weight, weight),
                                 (self.base_layer.bias, bias)):
                if delta is not None:
                    param.copy_((param.float() + delta.to(param.device)).to(param.dtype))

    def extra_repr(self) -> str:
        return (f'in={self.in_features}, out={self.out_features}, '
                f'rank={self.rank}, scaling={self.scaling:g}')

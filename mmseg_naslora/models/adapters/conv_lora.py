"""Conv-LoRA: LoRA with a mixture of multi-scale convolution experts.

Zhong et al., "Convolution Meets LoRA: Parameter Efficient Finetuning for
Segment Anything Model", ICLR 2024. The behaviour follows AutoGluon's official
code (``ConvLoRALinear`` + ``MoEConv``), whose gate is the noisy top-k gate of
Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
Mixture-of-Experts Layer", ICLR 2017.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from .lora import LoRA, accepts_deprecated_alpha


@MODELS.register_module()
class ConvLoRA(LoRA):
    """LoRA whose bottleneck adds a mixture of conv experts: ``z' = z + E_k(z)``.

    ``out = W0·x + s·B(z + E_k(z))`` with ``z = A·x`` on the token grid, so in
    SAM's windowed blocks each window is one sample for the gate and the
    experts. Expert ``i`` resizes ``z`` by ``scales[i]`` (bicubic), applies
    ``Conv2d(r, r, 3)`` and GELU, and resizes back; Shazeer's noisy top-k gate
    on the pooled ``z`` routes each sample to its experts, and only those are
    computed. The load-balancing loss of the last forward is kept in
    :attr:`aux_loss`; :func:`collect_aux_losses` sums it over a model for the
    segmentor's ``loss_moe``. As in the reference the expert outputs are not
    scaled by the gate value (``multiply_by_gates=False``), so with top-1 only
    ``loss_moe`` trains the gate. The gate, the balance loss and why
    ``loss_moe`` must reach the optimiser: ``docs/conv_lora_and_losses.md``.

    It is not linear (gated GELU experts), so it neither merges into ``W0``
    nor collapses: :meth:`bottleneck_map` is None.

    Deviations from the reference, none of which changes the top-1 forward:

    * The reference combines expert outputs in log space
      (``log Σ_i g_i·exp(y_i)``, inherited from Shazeer's code for log-prob
      experts). For one expert per sample that is ``y`` itself, so it is
      computed directly; with ``top_k > 1`` the same quantity is computed as a
      stable ``logsumexp``. This avoids the reference's ``exp`` overflow
      (fp16 overflows for ``y > 11``).
    * Gate logits, softmax, noise, Normal CDF and the balance loss run in fp32
      with autocast disabled, whatever the activation dtype.
    * Dropout, if any, is :class:`LoRA`'s (on the branch output); the
      reference drops out the input of ``A``.
    * ``mask_padding=True`` (the default) keeps window padding out: the gate
      pools over real tokens only and each window's experts run on its real
      part alone, as on the unpadded grid. The reference runs on the padded
      windows; ``mask_padding=False`` reproduces it.

    Args:
        base_layer (nn.Linear): The frozen layer to adapt.
        rank (int): Bottleneck rank r. Defaults to 3.
        lora_alpha (float): Scaling numerator (update scaled by
            lora_alpha / r). Defaults to 32.
        dropout (float): Dropout on the LoRA branch output. Defaults to 0.
        num_experts (int): Number of conv experts. Defaults to 8.
        scales (Sequence[float], optional): Resize factor of each expert; must
            have ``num_experts`` positive entries. None means
            ``(1, 2, ..., num_experts)``.
        top_k (int): Experts per sample. Defaults to 1.
        noisy_gating (bool): Add the learned Gaussian noise to the logits in
            training. Defaults to True.
        loss_coef (float): Weight of the balance loss. Defaults to 1e-2.
        noise_epsilon (float): Floor of the noise standard deviation.
            Defaults to 1e-2.
        multiply_by_gates (bool): Scale expert outputs by their gate value
            (in the reference's log-space sense: ``+ log g``). Defaults to
            False, as in the reference.
        mask_padding (bool): Keep window-padding tokens out of the gate and
            the experts (see :class:`LoRA`). Defaults to True.
    """

    @accepts_deprecated_alpha
    def __init__(self,
                 base_layer: nn.Linear,
                 rank: int = 3,
                 lora_alpha: float = 32.,
                 dropout: float = 0.,
                 num_experts: int = 8,
                 scales: Optional[Sequence[float]] = None,
                 top_k: int = 1,
                 noisy_gating: bool = True,
                 loss_coef: float = 1e-2,
                 noise_epsilon: float = 1e-2,
                 multiply_by_gates: bool = False,
                 mask_padding: bool = True) -> None:
        super().__init__(base_layer, rank=rank, lora_alpha=lora_alpha, dropout=dropout)
        if int(num_experts) != num_experts or num_experts < 1:
            raise ValueError(f'ConvLoRA num_experts must be an integer >= 1, '
                             f'got {num_experts}.')
        num_experts = int(num_experts)
        if scales is None:
            scales = tuple(range(1, num_experts + 1))
        scales = tuple(scales)
        if len(scales) != num_experts or any(s <= 0 for s in scales):
            raise ValueError(f'ConvLoRA scales={scales} must hold {num_experts} positive '
                             'resize factors (one per expert); leave it None for '
                             f'(1, ..., {num_experts}).')
        if int(top_k) != top_k or not 1 <= top_k <= num_experts:
            raise ValueError(f'ConvLoRA top_k must be an integer in '
                             f'[1, num_experts={num_experts}], got {top_k}.')
        self.num_experts = num_experts
        self.scales = scales
        self.top_k = int(top_k)
        self.noisy_gating = noisy_gating
        self.loss_coef = float(loss_coef)
        self.noise_epsilon = float(noise_epsilon)
        self.multiply_by_gates = multiply_by_gates
        self.mask_padding = bool(mask_padding)

        self.experts = nn.ModuleList()
        for _ in scales:
            conv = nn.Conv2d(self.rank, self.rank, 3, padding=1)
            nn.init.zeros_(conv.bias)
            self.experts.append(nn.Sequential(conv, nn.GELU()))
        self.w_gate = nn.Parameter(torch.zeros(self.rank, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(self.rank, num_experts))
        # Run-time state of the last forward, not module state.
        self.aux_loss: Optional[torch.Tensor] = None

    def bottleneck(self, z: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return ``z + E_k(z)`` for ``z`` of shape ``(N, H, W, r)``."""
        self.aux_loss = None
        x = z.permute(0, 3, 1, 2)
        m = None if mask is None else mask.permute(0, 3, 1, 2)
        gates, top_indices, self.aux_loss = self.gate(x, m)
        if m is None:
            mixed = self._run_experts(x, gates, top_indices)
        else:
            mixed = self._run_experts_on_real_part(x, m, gates, top_indices)
        return z + mixed.permute(0, 2, 3, 1)

    def bottleneck_map(self, dtype: torch.dtype = torch.float64) -> None:
        return None

    def gate(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy top-k gating of ``x`` (N, r, H, W), one decision per sample.

        Args:
            x (Tensor): The bottleneck map.
            mask (Tensor, optional): ``(N, 1, H, W)`` real positions; the
                pooled feature averages over them only.

        Returns:
            tuple: ``gates`` (N, num_experts) fp32, zero outside the top-k;
            ``top_indices`` (N, top_k) of the chosen experts; the scalar fp32
            balance loss.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            if mask is None:
                feats = x.float().mean(dim=(2, 3))
            else:
                m = mask.float()
                feats = (x.float() * m).sum((2, 3)) / m.sum((2, 3))
            clean = feats @ self.w_gate.float()
            noisy = self.noisy_gating and self.training
            if noisy:
                noise_std = F.softplus(feats @ self.w_noise.float()) \
                    + self.noise_epsilon
                logits = clean + torch.randn_like(clean) * noise_std
            else:
                logits = clean
            # One logit beyond the top-k gives the threshold of _prob_in_top_k.
            top_logits, top_indices = logits.topk(min(self.top_k + 1, self.num_experts), dim=1)
            top_indices = top_indices[:, :self.top_k]
            top_gates = top_logits[:, :self.top_k].softmax(dim=1)
            gates = torch.zeros_like(logits).scatter(1, top_indices, top_gates)

            importance = gates.sum(0)
            if noisy and self.top_k < self.num_experts:
                load = self._prob_in_top_k(clean, logits, noise_std, top_logits).sum(0)
            else:
                load = (gates > 0).float().sum(0)
            aux_loss = self.loss_coef * (_cv_squared(importance) + _cv_squared(load))
        return gates, top_indices, aux_loss

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor,
                       top_logits: torch.Tensor) -> torch.Tensor:
        """Probability of each expert being in the top-k under fresh noise.

        Shazeer et al. (2017): an expert now in the top-k stays there if its
        noisy logit beats the (k+1)-th value; one outside must beat the k-th.
        """
        threshold_if_in = top_logits[:, self.top_k:self.top_k + 1]
        threshold_if_out = top_logits[:, self.top_k - 1:self.top_k]
        is_in = noisy > threshold_if_in
        prob_if_in = _normal_cdf((clean - threshold_if_in) / noise_std)
        prob_if_out = _normal_cdf((clean - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out)

    def _run_experts_on_real_part(self, x: torch.Tensor, mask: torch.Tensor,
                                  gates: torch.Tensor, top_indices: torch.Tensor
                                  ) -> torch.Tensor:
        """:meth:`_run_experts` on each window's real (top-left) part, zero elsewhere.

        Windows are grouped by the size of their real part (at most four
        groups: inner, right, bottom, corner), so resizing and convolving see
        exactly the unpadded tokens.
        """
        _, _, h, w = x.shape
        heights = mask[:, 0, :, 0].sum(1)
        widths = mask[:, 0, 0, :].sum(1)
        mixed = torch.zeros_like(x)
        for rh, rw in torch.stack([heights, widths], 1).unique(dim=0).tolist():
            rows = ((heights == rh) & (widths == rw)).nonzero(as_tuple=True)[0]
            part = self._run_experts(x[rows, :, :rh, :rw], gates[rows], top_indices[rows])
            mixed = mixed.index_copy(0, rows, F.pad(part, (0, w - rw, 0, h - rh)))
        return mixed

    def _run_experts(self, x: torch.Tensor, gates: torch.Tensor,
                     top_indices: torch.Tensor) -> torch.Tensor:
        """Run each expert on the samples routed to it and combine."""
        n, _, h, w = x.shape
        k = self.top_k
        slots = x.new_zeros((n * k, ) + x.shape[1:])
        for i, (expert, scale) in enumerate(zip(self.experts, self.scales)):
            rows, slot = (top_indices == i).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = x.index_select(0, rows)
            if scale != 1:
                y = F.interpolate(y, scale_factor=scale, mode='bicubic', align_corners=False)
            y = expert(y)
            if scale != 1:
                y = F.interpolate(y, size=(h, w), mode='bicubic', align_corners=False)
            slots = slots.index_copy(0, rows * k + slot, y.to(slots.dtype))
        slots = slots.view((n, k) + x.shape[1:])
        if k == 1 and not self.multiply_by_gates:
            return slots[:, 0]
        # The reference's log-space combine, log Σ g·exp(y), done stably.
        with torch.autocast(device_type=x.device.type, enabled=False):
            values = slots.float()
            if self.multiply_by_gates:
                log_gates = gates.gather(1, top_indices).log()
                values = values + log_gates[:, :, None, None, None]
            return values.logsumexp(dim=1).to(x.dtype)

    def __getstate__(self) -> dict:
        # The last loss may carry an autograd graph, which cannot be copied.
        state = super().__getstate__()
        return dict(state, aux_loss=None)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_experts={self.num_experts}, '
                f'scales={self.scales}, top_k={self.top_k}')


def collect_aux_losses(model: nn.Module, reset: bool = True) -> Optional[torch.Tensor]:
    """Sum the balance losses that every :class:`ConvLoRA` in ``model`` stored.

    Call it after the forward whose loss it belongs to, e.g. in a segmentor's
    ``loss()``: ``losses['loss_moe'] = collect_aux_losses(self.backbone)``.

    Args:
        model (nn.Module): Model holding ConvLoRA adapters.
        reset (bool): Clear the stored losses after reading them, so a stale
            one is never added twice and no graph outlives its step.
            Defaults to True.

    Returns:
        Tensor | None: Scalar fp32 sum, or None when no adapter has a loss
        (no ConvLoRA in the model, or no forward since the last reset).
    """
    total = None
    for module in model.modules():
        if isinstance(module, ConvLoRA) and module.aux_loss is not None:
            total = module.aux_loss if total is None else total + module.aux_loss
            if reset:
                module.aux_loss = None
    return total


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, ``var / (mean² + 1e-10)``; 0 for one value."""
    x = x.float()
    if x.numel() == 1:
        return x.new_zeros(())
    return x.var() / (x.mean()**2 + 1e-10)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))

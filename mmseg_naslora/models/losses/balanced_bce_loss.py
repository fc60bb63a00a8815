"""Class-balanced BCE, as AutoGluon's Conv-LoRA trains SBU shadow detection."""

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from .binary_loss import BinaryLoss


@MODELS.register_module()
class BalancedBCELoss(BinaryLoss):
    """BCE with the positive and negative pixels of a batch weighted to balance.

    AutoGluon's ``BBCEWithLogitLoss`` (``optim/losses/bce_loss.py``, after
    EVP's ``segformer.py``), selected by ``optim.loss_func='balanced_bce'``
    for Conv-LoRA's shadow detection (SBU). With ``P`` positive and ``N``
    negative pixels in the batch (``P`` plus ``eps = 1e-10``)::

        loss = P/(P+N) · mean_pixels[ -(N/P)·g·log p - (1-g)·log(1-p) ]

    i.e. each positive pixel weighs ``N/(P+N)`` and each negative one
    ``P/(P+N)``, both divided by the pixel count: the rarer class gets the
    larger weight. The counts are taken over the whole batch, as in the
    reference; a batch without any positive pixel gives (almost) zero loss.

    Ignored pixels are left out of the counts and the mean (the reference has
    no ignore label); an optional pixel ``weight`` multiplies each pixel's
    count and term.

    Args:
        eps (float): Added to the positive count. Defaults to 1e-10.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
        loss_name (str): Key in the loss dict; must start with ``loss_`` to
            be back-propagated. Defaults to ``'loss_bbce'``.
    """

    def __init__(self,
                 eps: float = 1e-10,
                 loss_weight: float = 1.,
                 loss_name: str = 'loss_bbce') -> None:
        super().__init__(loss_weight, loss_name)
        self.eps = eps

    def binary_loss(self, logits: torch.Tensor, gt: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        count_pos = (mask * gt).sum() + self.eps
        count_neg = (mask * (1 - gt)).sum()
        ratio = count_neg / count_pos  # BCEWithLogitsLoss's pos_weight in the reference
        w_neg = count_pos / (count_pos + count_neg)
        pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits),
                                                 reduction='none')
        neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                                 reduction='none')
        bce = ratio * gt * pos + (1 - gt) * neg
        loss = w_neg * (mask * bce).sum() / mask.sum().clamp(min=1)
        return loss

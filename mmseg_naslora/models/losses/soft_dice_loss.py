"""Soft Dice loss for a sigmoid binary head."""

import torch
from mmseg.registry import MODELS

from .binary_loss import BinaryLoss, image_mean


@MODELS.register_module()
class SoftDiceLoss(BinaryLoss):
    """Soft Dice ``1 - (2Σp·y + s) / (Σp + Σy + s)`` over sigmoid probabilities.

    Used in SAM2LoRA's composite loss (Mandal et al., "SAM2LoRA: Composite
    Loss-Guided, Parameter-Efficient Finetuning of SAM2 for Retinal Fundus
    Segmentation", 2025). Ignored pixels are left out of every sum.

    Why not mmseg's ``DiceLoss``: for a 1-channel head it one-hot encodes the
    label into the indicator of class 0 (the background), its
    ``ignore_index`` drops a class channel rather than pixels (ignored pixels
    count as background), and it defaults to the squared V-Net denominator
    with ``eps=1e-3`` instead of this linear one with smoothing 1.

    Args:
        smooth (float): Added to numerator and denominator. Defaults to 1.
        per_image (bool): Compute the ratio per image and average over the
            images with a non-ignored pixel; False (default) sums over all
            pixels of the batch, as the common implementation of this
            formula does.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
        loss_name (str): Key in the loss dict; must start with ``loss_`` to
            be back-propagated. Defaults to ``'loss_sdice'``.
    """

    def __init__(self,
                 smooth: float = 1.,
                 per_image: bool = False,
                 loss_weight: float = 1.,
                 loss_name: str = 'loss_sdice') -> None:
        super().__init__(loss_weight, loss_name)
        self.smooth = smooth
        self.per_image = per_image

    def binary_loss(self, logits: torch.Tensor, gt: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        prob = logits.sigmoid()
        dims = (1, 2) if self.per_image else (0, 1, 2)
        inter = (mask * prob * gt).sum(dims)
        total = (mask * (prob + gt)).sum(dims)
        dice = (2 * inter + self.smooth) / (total + self.smooth)
        loss = image_mean(1 - dice, mask) if self.per_image else 1 - dice
        return loss

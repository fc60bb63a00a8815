"""Focal Tversky loss for a sigmoid binary head."""

import torch
from mmseg.registry import MODELS

from .binary_loss import BinaryLoss, image_mean


@MODELS.register_module()
class FocalTverskyLoss(BinaryLoss):
    """Focal Tversky loss ``(1 - TI)^gamma`` over sigmoid probabilities.

    ``TI = (TP + s) / (TP + alpha·FN + beta·FP + s)`` with soft counts
    ``TP = Σp·y``, ``FN = Σ(1-p)·y``, ``FP = Σp·(1-y)`` over non-ignored
    pixels. Abraham and Khan, "A Novel Focal Tversky Loss Function with
    Improved Attention U-Net for Lesion Segmentation", ISBI 2019; the defaults
    (alpha 0.7, beta 0.3, gamma 0.75, smoothing 1) are SAM2LoRA's.

    Note the naming: ``alpha`` weighs false negatives, as in Abraham and
    Khan; mmseg's ``TverskyLoss`` uses ``alpha`` for false positives (and a
    softmax, which is constant for a 1-channel head).

    Args:
        alpha (float): Weight of false negatives. Defaults to 0.7.
        beta (float): Weight of false positives. Defaults to 0.3.
        gamma (float): Focal exponent. Defaults to 0.75.
        smooth (float): Added to numerator and denominator. Defaults to 1.
        per_image (bool): Compute ``TI`` and the focal term per image and
            average over the images with a non-ignored pixel; False
            (default) counts over all pixels of the batch.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
        loss_name (str): Key in the loss dict; must start with ``loss_`` to
            be back-propagated. Defaults to ``'loss_ftversky'``.
    """

    def __init__(self,
                 alpha: float = 0.7,
                 beta: float = 0.3,
                 gamma: float = 0.75,
                 smooth: float = 1.,
                 per_image: bool = False,
                 loss_weight: float = 1.,
                 loss_name: str = 'loss_ftversky') -> None:
        super().__init__(loss_weight, loss_name)
        if gamma <= 0:
            raise ValueError(f'FocalTverskyLoss gamma must be > 0, got {gamma}.')
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.smooth = smooth
        self.per_image = per_image

    def binary_loss(self, logits: torch.Tensor, gt: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        prob = logits.sigmoid()
        dims = (1, 2) if self.per_image else (0, 1, 2)
        tp = (mask * prob * gt).sum(dims)
        fn = (mask * (1 - prob) * gt).sum(dims)
        fp = (mask * prob * (1 - gt)).sum(dims)
        tversky = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
        # d/dx x^gamma is infinite at 0 for gamma < 1 (reached when nothing
        # counts): the floor keeps that gradient at 0 instead of NaN.
        focal = (1 - tversky).clamp(min=1e-12)**self.gamma
        loss = image_mean(focal, mask) if self.per_image else focal
        return loss

"""PraNet's structure loss (weighted BCE + weighted IoU) for a binary head."""

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from .binary_loss import BinaryLoss, image_mean


@MODELS.register_module()
class StructureLoss(BinaryLoss):
    """Boundary-weighted BCE plus weighted IoU over sigmoid probabilities.

    Fan et al., "PraNet: Parallel Reverse Attention Network for Polyp
    Segmentation", MICCAI 2020 (also used by Conv-LoRA for binary tasks).
    Per image, with pixel weight ``w = 1 + 5·|avgpool31(g) - g|`` (a 31x31
    box mean, stride 1, padding 15, zero padding counted as in PraNet), so
    pixels near the mask boundary weigh up to 6x:

    * ``wbce = Σw·bce(p, g) / Σw``;
    * ``wiou = 1 - (Σw·p·g + 1) / (Σw·(p + g - p·g) + 1)``;

    and the loss is the mean of ``wbce + wiou`` over the batch.

    Ignored pixels are excluded everywhere: their ``w`` is 0 in every sum, and
    inside the box filter they count as background (0), exactly like the zero
    padding beyond the image border, so ignoring a region acts as cropping it
    away. Images whose pixels are all ignored are left out of the batch mean.

    PraNet's and AutoGluon's code call ``binary_cross_entropy_with_logits``
    with the deprecated ``reduce='none'``, which PyTorch reads as
    ``reduction='mean'``; their BCE term is therefore the plain mean BCE of
    the batch, not weighted. ``weighted_bce=False`` reproduces that.

    Args:
        weighted_bce (bool): Weight the BCE term by ``w`` as the paper says
            (default); False gives the reference code's plain mean BCE over
            all non-ignored pixels of the batch.
        kernel_size (int): Side of the box filter. Defaults to 31.
        boundary_weight (float): The 5 in ``1 + 5·|...|``. Defaults to 5.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
        loss_name (str): Key in the loss dict; must start with ``loss_`` to
            be back-propagated. Defaults to ``'loss_structure'``.
    """

    def __init__(self,
                 weighted_bce: bool = True,
                 kernel_size: int = 31,
                 boundary_weight: float = 5.,
                 loss_weight: float = 1.,
                 loss_name: str = 'loss_structure') -> None:
        super().__init__(loss_weight, loss_name)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'StructureLoss kernel_size must be a positive odd '
                             f'integer, got {kernel_size}.')
        self.weighted_bce = weighted_bce
        self.kernel_size = kernel_size
        self.boundary_weight = boundary_weight

    def binary_loss(self, logits: torch.Tensor, gt: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        local_mean = F.avg_pool2d(gt[:, None],
                                  self.kernel_size,
                                  stride=1,
                                  padding=self.kernel_size // 2)[:, 0]
        w = mask * (1 + self.boundary_weight * (local_mean - gt).abs())

        bce = F.binary_cross_entropy_with_logits(logits, gt, reduction='none')
        if self.weighted_bce:
            bce_term = (w * bce).sum((1, 2)) / w.sum((1, 2)).clamp(min=1e-12)
        else:
            bce_term = (mask * bce).sum() / mask.sum().clamp(min=1e-12)

        prob = logits.sigmoid()
        inter = (w * prob * gt).sum((1, 2))
        union = (w * (prob + gt)).sum((1, 2)) - inter
        iou_term = 1 - (inter + 1) / (union + 1)
        return image_mean(bce_term + iou_term, mask)

"""The shared front end of this package's sigmoid binary losses.

:func:`binary_inputs` turns mmseg's ``(seg_logits, seg_label)`` pair into fp32
logits, 0/1 targets and a pixel mask in which ignored pixels are 0;
:class:`BinaryLoss` wraps it in mmseg's loss interface, so that each loss
(:class:`SoftDiceLoss`, ``FocalTverskyLoss``, ``StructureLoss``,
``BalancedBCELoss``) only writes :meth:`BinaryLoss.binary_loss`.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn


def binary_inputs(pred: torch.Tensor,
                  target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None,
                  ignore_index: Optional[int] = 255,
                  loss: str = 'binary loss') -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check and convert the inputs of a sigmoid binary loss.

    Args:
        pred (Tensor): Logits ``(N, 1, H, W)`` (a decode head with
            ``out_channels=1``) or ``(N, H, W)``.
        target (Tensor): Labels ``(N, H, W)`` or ``(N, 1, H, W)`` with values
            0, 1 or ``ignore_index``.
        weight (Tensor, optional): Pixel weights shaped like ``target``
            (e.g. from an mmseg pixel sampler); they multiply the mask.
        ignore_index (int, optional): Label of pixels that never count.
            None counts every pixel.
        loss (str): Name used in error messages.

    Returns:
        tuple[Tensor]: ``logits``, ``gt`` and ``mask``, each fp32
        ``(N, H, W)``. Logits and gt are 0 at ignored pixels, so non-finite
        logits there cannot leak into sums or gradients; ``mask`` is 0 there
        and the pixel weight elsewhere.
    """
    if pred.dim() == 4:
        if pred.shape[1] != 1:
            raise ValueError(f'{loss} takes the logits of a sigmoid binary head (N, 1, H, '
                             f'W), got {tuple(pred.shape)}; set the decode head to '
                             'out_channels=1, num_classes=2 (and a threshold).')
        pred = pred[:, 0]
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(f'{loss}: pred {tuple(pred.shape)} and target '
                         f'{tuple(target.shape)} do not describe the same '
                         '(N, H, W) pixels.')
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    positive = target == 1
    if ((target != 0) & ~positive & valid).any():
        found = torch.unique(target[valid]).tolist()
        raise ValueError(f'{loss} expects labels 0/1 (and ignore_index={ignore_index}), '
                         f'got {found[:8]}; binarise the masks in the dataset (e.g. '
                         "LoadAnnotations + a 0/255 -> 0/1 mapping) or fix ignore_index.")
    mask = valid.float()
    if weight is not None:
        if weight.dim() == 4 and weight.shape[1] == 1:
            weight = weight[:, 0]
        if weight.shape != mask.shape:
            raise ValueError(f'{loss}: weight {tuple(weight.shape)} must match '
                             f'the labels {tuple(mask.shape)}.')
        mask = mask * weight.float()
    logits = torch.where(valid, pred.float(), pred.new_zeros((), dtype=torch.float32))
    gt = (positive & valid).float()
    return logits, gt, mask


def image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-image ``values`` (N,) over the images that have a counted pixel.

    An image whose pixels are all ignored has no loss to give; averaging it
    in as 0 would only shrink the others.
    """
    counted = (mask.flatten(1).sum(1) > 0).float()
    return (values * counted).sum() / counted.sum().clamp(min=1)


class BinaryLoss(nn.Module):
    """mmseg's loss interface around :meth:`binary_loss` (not registered itself).

    Args:
        loss_weight (float): Multiplier of the loss. Defaults to 1.
        loss_name (str): Key in the loss dict; must start with ``loss_`` to
            be back-propagated.
    """

    def __init__(self, loss_weight: float = 1., loss_name: str = 'loss_binary') -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    def forward(self,
                pred: torch.Tensor,
                target: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                ignore_index: Optional[int] = 255,
                **kwargs) -> torch.Tensor:
        """Loss of logits ``pred`` (N, 1, H, W) against labels (N, H, W).

        Extra keyword arguments of mmseg's loss interface (``avg_factor``,
        ``reduction_override``) are accepted and have no effect.
        """
        logits, gt, mask = binary_inputs(pred, target, weight, ignore_index, type(self).__name__)
        return self.loss_weight * self.binary_loss(logits, gt, mask)

    def binary_loss(self, logits: torch.Tensor, gt: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of :func:`binary_inputs`' ``(N, H, W)`` outputs."""
        raise NotImplementedError

    @property
    def loss_name(self) -> str:
        return self._loss_name

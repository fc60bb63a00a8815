"""Mask2Former's set loss for a query-based semantic head."""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS
from scipy.optimize import linear_sum_assignment


@MODELS.register_module()
class MaskSetLoss(nn.Module):
    """Hungarian-matched classification + mask loss (Cheng et al., CVPR 2022).

    Each image's ground truth becomes one binary mask per class present. The
    N predicted (class, mask) pairs are matched one-to-one to those targets by
    minimising ``w_cls·(-p[class]) + w_mask·BCE + w_dice·Dice``
    (``scipy.optimize.linear_sum_assignment``). Unmatched queries learn the
    "no object" class (index K, weighted ``no_object_weight``); matched ones
    also get the mask BCE and Dice losses. Mask2Former samples points for the
    mask terms; here every pixel of the mask resolution counts, which is
    affordable at SAM's 1/4-resolution masks. Pixels at ``ignore_index`` never
    count, in the matching costs or in the losses.

    Args:
        num_classes (int): K, the number of real classes.
        loss_cls_weight (float): Defaults to 2.0 (Mask2Former).
        loss_mask_weight (float): Defaults to 5.0.
        loss_dice_weight (float): Defaults to 5.0.
        no_object_weight (float): CE weight of the no-object class. Defaults to 0.1.
        ignore_index (int): Defaults to 255.
    """

    def __init__(self,
                 num_classes: int,
                 loss_cls_weight: float = 2.0,
                 loss_mask_weight: float = 5.0,
                 loss_dice_weight: float = 5.0,
                 no_object_weight: float = 0.1,
                 ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = dict(cls=loss_cls_weight, mask=loss_mask_weight, dice=loss_dice_weight)
        self.ignore_index = ignore_index
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = no_object_weight
        self.register_buffer('class_weight', class_weight, persistent=False)

    def targets(self, seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Split one ``(H, W)`` label map into classes ``(M,)`` and masks ``(M, H, W)``."""
        classes = torch.unique(seg)
        classes = classes[(classes != self.ignore_index)]
        if (classes >= self.num_classes).any() or (classes < 0).any():
            raise ValueError(f'label values {classes.tolist()} fall outside [0, '
                             f'{self.num_classes}) and are not ignore_index='
                             f'{self.ignore_index}; check num_classes and the masks.')
        return classes, (seg[None] == classes[:, None, None]).float()

    @torch.no_grad()
    def match(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor,
              masks: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices ``(query_idx, target_idx)`` of the optimal one-to-one assignment."""
        prob = cls_logits.float().softmax(-1)[:, classes]  # (N, M)
        logits = mask_logits.float().flatten(1)[:, valid]  # (N, P)
        tgt = masks.flatten(1)[:, valid]  # (M, P)
        n_pix = max(tgt.shape[1], 1)
        pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction='none')
        neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction='none')
        cost_mask = (pos @ tgt.t() + neg @ (1 - tgt).t()) / n_pix
        p = logits.sigmoid()
        cost_dice = 1 - (2 * p @ tgt.t() + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
        cost = (self.weights['cls'] * -prob + self.weights['mask'] * cost_mask +
                self.weights['dice'] * cost_dice)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return (torch.as_tensor(rows, dtype=torch.long, device=cls_logits.device),
                torch.as_tensor(cols, dtype=torch.long, device=cls_logits.device))

    def forward(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor,
                seg_labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss of a batch.

        Args:
            cls_logits (Tensor): ``(B, N, K+1)`` class logits per query.
            mask_logits (Tensor): ``(B, N, h, w)`` mask logits per query.
            seg_labels (Tensor): ``(B, H, W)`` label maps; resized (nearest) to
                ``(h, w)`` for the mask terms.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_mask`` and ``loss_dice``.
        """
        b, n = cls_logits.shape[:2]
        labels = F.interpolate(seg_labels[:, None].float(), size=mask_logits.shape[-2:],
                               mode='nearest')[:, 0].long()
        cls_target = cls_logits.new_full((b, n), self.num_classes, dtype=torch.long)
        matched_logits: List[torch.Tensor] = []
        matched_masks: List[torch.Tensor] = []
        matched_valid: List[torch.Tensor] = []
        for i in range(b):
            valid = (labels[i] != self.ignore_index).flatten()
            classes, masks = self.targets(labels[i])
            if len(classes) == 0:
                continue
            q, t = self.match(cls_logits[i], mask_logits[i], classes, masks, valid)
            cls_target[i, q] = classes[t]
            matched_logits.append(mask_logits[i, q].flatten(1))
            matched_masks.append(masks[t].flatten(1))
            matched_valid.append(valid.expand(len(q), -1))
        loss_cls = F.cross_entropy(cls_logits.float().transpose(1, 2), cls_target,
                                   weight=self.class_weight.to(cls_logits.device))
        if not matched_logits:  # every pixel ignored: no mask supervision
            zero = mask_logits.sum() * 0
            return dict(loss_cls=self.weights['cls'] * loss_cls, loss_mask=zero, loss_dice=zero)
        logits = torch.cat(matched_logits).float()
        tgt = torch.cat(matched_masks)
        valid = torch.cat(matched_valid).float()
        n_masks = logits.shape[0]
        bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction='none')
        loss_mask = ((bce * valid).sum(1) / valid.sum(1).clamp(min=1)).sum() / n_masks
        p = logits.sigmoid() * valid
        dice = 1 - (2 * (p * tgt).sum(1) + 1) / (p.sum(1) + (tgt * valid).sum(1) + 1)
        return dict(loss_cls=self.weights['cls'] * loss_cls,
                    loss_mask=self.weights['mask'] * loss_mask,
                    loss_dice=self.weights['dice'] * dice.sum() / n_masks)

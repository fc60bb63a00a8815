"""Mask2Former's set loss for a query-based semantic head."""
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS
from scipy.optimize import linear_sum_assignment

# Named recipes; explicit arguments override them.
SET_LOSS_PRESETS = {
    # Mask2Former (Cheng et al., 2022): the same 2/5/5 weights match and train,
    # on 112x112 = 12544 sampled points.
    'mask2former': dict(loss_cls_weight=2.0, loss_mask_weight=5.0, loss_dice_weight=5.0,
                        match_cls_weight=2.0, match_mask_weight=5.0, match_dice_weight=5.0,
                        num_points=12544),
    # AutoGluon's Conv-LoRA trains with HF's Mask2FormerLoss: its matcher
    # hard-codes cost_class=1 (mask/dice 5 from Mask2FormerConfig), and the
    # caller sums the three losses, so the weight dict is never applied (1:1:1).
    'autogluon': dict(loss_cls_weight=1.0, loss_mask_weight=1.0, loss_dice_weight=1.0,
                      match_cls_weight=1.0, match_mask_weight=5.0, match_dice_weight=5.0,
                      num_points=12544),
}
# Today's defaults (no preset): Mask2Former's weights, every pixel of the mask grid.
_DEFAULTS = dict(loss_cls_weight=2.0, loss_mask_weight=5.0, loss_dice_weight=5.0,
                 num_points=None)


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``(R, C, H, W)`` maps at ``(R, P, 2)`` points in ``[0, 1]²``.

    As Mask2Former's ``point_sample`` (detectron2 PointRend): ``coords`` are
    ``(x, y)`` fractions of the width and height (``align_corners=False``, so
    ``(j + 0.5) / W`` is the centre of column ``j``); points past the outer
    half pixel see zero padding.

    Returns:
        Tensor: ``(R, C, P)``.
    """
    out = F.grid_sample(inputs, 2.0 * coords[:, :, None] - 1.0, mode='bilinear',
                        padding_mode='zeros', align_corners=False)
    return out[..., 0]


def uncertain_point_coords(logits: torch.Tensor,
                           uncertainty: Callable[[torch.Tensor], torch.Tensor],
                           num_points: int,
                           oversample_ratio: float,
                           importance_sample_ratio: float,
                           invalid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask2Former's ``get_uncertain_point_coords_with_randomness``.

    Draws ``oversample_ratio·num_points`` uniform candidates per map, keeps the
    ``importance_sample_ratio·num_points`` most uncertain ones and adds uniform
    points up to ``num_points``.

    Args:
        logits (Tensor): ``(R, 1, h, w)`` mask logits.
        uncertainty (callable): ``(R, 1, P)`` sampled logits to uncertainty
            scores (higher is more uncertain).
        num_points (int): Points per map.
        oversample_ratio (float): Candidates per kept point (>= 1).
        importance_sample_ratio (float): Fraction of points chosen by
            uncertainty, in ``[0, 1]``.
        invalid (Tensor, optional): ``(R, 1, H, W)`` 0/1 maps of ignored
            pixels; a candidate that interpolates any of them is never chosen
            as an uncertain point (this is our addition).

    Returns:
        Tensor: ``(R, num_points, 2)`` coordinates in ``[0, 1]²``.
    """
    r = logits.shape[0]
    n_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(r, n_sampled, 2, device=logits.device)
    scores = uncertainty(point_sample(logits, coords))[:, 0]  # (R, n_sampled)
    if invalid is not None:
        scores = scores.masked_fill(point_sample(invalid, coords)[:, 0] > 0, float('-inf'))
    n_uncertain = int(importance_sample_ratio * num_points)
    idx = torch.topk(scores, k=n_uncertain, dim=1)[1]
    coords = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    n_random = num_points - n_uncertain
    if n_random > 0:
        coords = torch.cat([coords, torch.rand(r, n_random, 2, device=logits.device)], 1)
    return coords


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's ``calculate_uncertainty``: ``-|logit|`` (0 on the decision boundary)."""
    return -logits.abs()


def downsample_labels(seg: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Label maps ``(B, H, W)`` at the pixel centres of a coarser ``size`` grid.

    Output pixel ``i`` covers input ``[i·s, (i+1)·s)`` (``s = H/h``); its centre
    ``(i + 0.5)·s`` lies in input pixel ``floor((i + 0.5)·s)`` (``4i + 2`` for
    ``s = 4``), the one that ``bilinear`` (``align_corners=False``) upsampling
    of the logits at inference puts under the output pixel's centre. Plain
    ``nearest`` takes ``floor(i·s)``, the top-left pixel of the block: a
    1.5-pixel shift at ``s = 4``, and a structure that misses the top-left
    row/column of every block vanishes.
    """
    if tuple(seg.shape[-2:]) == tuple(size):
        return seg
    return F.interpolate(seg[:, None].float(), size=size, mode='nearest-exact')[:, 0].long()


@MODELS.register_module()
class MaskSetLoss(nn.Module):
    """Hungarian-matched classification + mask loss (Cheng et al., CVPR 2022).

    Each image's ground truth becomes one binary mask per class present. The
    N predicted (class, mask) pairs are matched one-to-one to those targets by
    minimising ``c_cls·(-p[class]) + c_mask·BCE + c_dice·Dice``
    (``scipy.optimize.linear_sum_assignment``). Unmatched queries learn the
    "no object" class (index K, weighted ``no_object_weight``); matched ones
    also get the mask BCE (mean over a mask's pixels or points, then the mean
    over matched masks) and Dice losses. Pixels at ``ignore_index`` never
    count, in the matching costs or in the losses.

    Two ways to evaluate the mask terms:

    - ``num_points=0`` (the default without a preset): every pixel of the mask-logit grid, with
      the labels taken at the grid's pixel centres (:func:`downsample_labels`).
      Affordable at SAM's 1/4-resolution masks.
    - ``num_points=P``: Mask2Former's point sampling. Matching uses P uniform
      random points shared by all queries and targets; the loss uses P points
      per matched mask, ``importance_sample_ratio·P`` of them the most
      uncertain (``-|logit|``) of ``oversample_ratio·P`` uniform candidates,
      the rest uniform. Logits and labels are bilinearly sampled at the same
      normalised positions, the labels at their full resolution (so thin
      structures count whenever a point hits them). A point that interpolates
      an ignored label pixel is dropped.

    Presets (:data:`SET_LOSS_PRESETS`; explicit arguments override them):
    ``'mask2former'`` (2/5/5 matching and loss weights, 12544 points) and
    ``'autogluon'`` (matcher costs 1/5/5, loss weights 1:1:1, 12544 points:
    what AutoGluon's Conv-LoRA gets from HF's ``Mask2FormerLoss``).

    Args:
        num_classes (int): K, the number of real classes.
        preset (str, optional): ``'mask2former'`` or ``'autogluon'``.
            Defaults to None: weights 2/5/5 and the full grid.
        loss_cls_weight (float, optional): Defaults to 2.0 (Mask2Former).
        loss_mask_weight (float, optional): Defaults to 5.0.
        loss_dice_weight (float, optional): Defaults to 5.0.
        match_cls_weight (float, optional): Matching cost of the class term.
            Defaults to ``loss_cls_weight`` (as Mask2Former).
        match_mask_weight (float, optional): Defaults to ``loss_mask_weight``.
        match_dice_weight (float, optional): Defaults to ``loss_dice_weight``.
        no_object_weight (float): CE weight of the no-object class. Defaults to 0.1.
        num_points (int, optional): Sampled points per mask; 0 for every
            pixel of the mask grid. Defaults to None: the preset's (12544),
            or every pixel without a preset.
        oversample_ratio (float): Defaults to 3.0 (Mask2Former).
        importance_sample_ratio (float): Defaults to 0.75 (Mask2Former).
        ignore_index (int): Defaults to 255.
    """

    def __init__(self,
                 num_classes: int,
                 preset: Optional[str] = None,
                 loss_cls_weight: Optional[float] = None,
                 loss_mask_weight: Optional[float] = None,
                 loss_dice_weight: Optional[float] = None,
                 match_cls_weight: Optional[float] = None,
                 match_mask_weight: Optional[float] = None,
                 match_dice_weight: Optional[float] = None,
                 no_object_weight: float = 0.1,
                 num_points: Optional[int] = None,
                 oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if preset is not None and preset not in SET_LOSS_PRESETS:
            raise ValueError(f'preset must be one of {sorted(SET_LOSS_PRESETS)} or None, '
                             f'got {preset!r}.')
        given = dict(loss_cls_weight=loss_cls_weight, loss_mask_weight=loss_mask_weight,
                     loss_dice_weight=loss_dice_weight, match_cls_weight=match_cls_weight,
                     match_mask_weight=match_mask_weight, match_dice_weight=match_dice_weight,
                     num_points=num_points)
        cfg = dict(_DEFAULTS, **SET_LOSS_PRESETS.get(preset, {}))
        cfg.update({k: v for k, v in given.items() if v is not None})
        if cfg['num_points'] == 0:  # explicit full grid, also under a preset
            cfg['num_points'] = None
        for term in ('cls', 'mask', 'dice'):
            cfg.setdefault(f'match_{term}_weight', cfg[f'loss_{term}_weight'])
        if cfg['num_points'] is not None and cfg['num_points'] < 0:
            raise ValueError(f"num_points must be None, 0 or positive, got {num_points}.")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f'need oversample_ratio >= 1 and importance_sample_ratio in '
                             f'[0, 1], got {oversample_ratio} and {importance_sample_ratio}.')
        self.num_classes = num_classes
        self.preset = preset
        self.weights = {t: cfg[f'loss_{t}_weight'] for t in ('cls', 'mask', 'dice')}
        self.match_weights = {t: cfg[f'match_{t}_weight'] for t in ('cls', 'mask', 'dice')}
        self.num_points = cfg['num_points']
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
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
        """Indices ``(query_idx, target_idx)`` of the optimal one-to-one assignment.

        Args:
            cls_logits (Tensor): ``(N, K+1)``.
            mask_logits (Tensor): ``(N, ...)`` logits at the ``P`` positions
                (pixels or points) of ``masks``.
            classes (Tensor): ``(M,)`` target classes.
            masks (Tensor): ``(M, ...)`` target masks (0/1, or soft at points).
            valid (Tensor): ``(P,)`` bool, the positions that count.
        """
        prob = cls_logits.float().softmax(-1)[:, classes]  # (N, M)
        logits = mask_logits.float().flatten(1)[:, valid]  # (N, P)
        tgt = masks.float().flatten(1)[:, valid]  # (M, P)
        n_pix = max(tgt.shape[1], 1)
        pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction='none')
        neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction='none')
        cost_mask = (pos @ tgt.t() + neg @ (1 - tgt).t()) / n_pix
        p = logits.sigmoid()
        cost_dice = 1 - (2 * p @ tgt.t() + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
        w = self.match_weights
        cost = w['cls'] * -prob + w['mask'] * cost_mask + w['dice'] * cost_dice
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return (torch.as_tensor(rows, dtype=torch.long, device=cls_logits.device),
                torch.as_tensor(cols, dtype=torch.long, device=cls_logits.device))

    def _sample_for_matching(self, mask_logits: torch.Tensor, masks: torch.Tensor,
                             seg: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(logits (N, P), masks (M, P), valid (P,))`` at P shared uniform points."""
        coords = torch.rand(1, self.num_points, 2, device=mask_logits.device)
        ignored = (seg == self.ignore_index).float()[None, None]
        valid = point_sample(ignored, coords)[0, 0] == 0
        logits = point_sample(mask_logits[None].float(), coords)[0]
        return logits, point_sample(masks[None], coords)[0], valid

    def _sample_for_loss(self, logits: torch.Tensor, masks: torch.Tensor,
                      ignored: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Importance-sampled ``(point_logits, point_labels, point_valid)`` of matched masks."""
        logits = logits[:, None].float()
        with torch.no_grad():
            coords = uncertain_point_coords(logits, logit_uncertainty, self.num_points,
                                            self.oversample_ratio,
                                            self.importance_sample_ratio, invalid=ignored)
            point_labels = point_sample(masks, coords)[:, 0]
            point_valid = (point_sample(ignored, coords)[:, 0] == 0).float()
        return point_sample(logits, coords)[:, 0], point_labels, point_valid

    def forward(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor,
                seg_labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss of a batch.

        Args:
            cls_logits (Tensor): ``(B, N, K+1)`` class logits per query.
            mask_logits (Tensor): ``(B, N, h, w)`` mask logits per query.
            seg_labels (Tensor): ``(B, H, W)`` label maps. On the full grid they
                are taken at the ``(h, w)`` pixel centres; with points they are
                sampled at their own resolution.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_mask`` and ``loss_dice``.
        """
        b, n = cls_logits.shape[:2]
        points = self.num_points is not None
        labels = seg_labels if points else downsample_labels(seg_labels, mask_logits.shape[-2:])
        cls_target = cls_logits.new_full((b, n), self.num_classes, dtype=torch.long)
        matched_logits: List[torch.Tensor] = []
        matched_masks: List[torch.Tensor] = []
        matched_valid: List[torch.Tensor] = []  # with points: the ignored maps
        for i in range(b):
            classes, masks = self.targets(labels[i])
            if len(classes) == 0:
                continue
            ignored = labels[i] == self.ignore_index
            if points:
                logits, tgt, valid = self._sample_for_matching(mask_logits[i], masks, labels[i])
                q, t = self.match(cls_logits[i], logits, classes, tgt, valid)
                # full-resolution masks and ignore maps; the loss draws its own points
                matched_logits.append(mask_logits[i, q])
                matched_masks.append(masks[t])
                matched_valid.append(ignored.float().expand(len(q), -1, -1))
            else:
                valid = ~ignored.flatten()
                q, t = self.match(cls_logits[i], mask_logits[i], classes, masks, valid)
                matched_logits.append(mask_logits[i, q].flatten(1))
                matched_masks.append(masks[t].flatten(1))
                matched_valid.append(valid.expand(len(q), -1))
            cls_target[i, q] = classes[t]
        loss_cls = F.cross_entropy(cls_logits.float().transpose(1, 2), cls_target,
                                   weight=self.class_weight.to(cls_logits.device))
        if not matched_logits:  # every pixel ignored: no mask supervision
            zero = mask_logits.sum() * 0
            return dict(loss_cls=self.weights['cls'] * loss_cls, loss_mask=zero, loss_dice=zero)
        if points:
            logits, tgt, valid = self._sample_for_loss(torch.cat(matched_logits),
                                                    torch.cat(matched_masks)[:, None],
                                                    torch.cat(matched_valid)[:, None])
        else:
            logits = torch.cat(matched_logits).float()
            tgt = torch.cat(matched_masks)
            valid = torch.cat(matched_valid).float()
        n_masks = logits.shape[0]
        # Mask2Former: BCE averaged over each mask's points, then over the masks.
        bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction='none')
        loss_mask = ((bce * valid).sum(1) / valid.sum(1).clamp(min=1)).sum() / n_masks
        p = logits.sigmoid() * valid
        dice = 1 - (2 * (p * tgt).sum(1) + 1) / (p.sum(1) + (tgt * valid).sum(1) + 1)
        return dict(loss_cls=self.weights['cls'] * loss_cls,
                    loss_mask=self.weights['mask'] * loss_mask,
                    loss_dice=self.weights['dice'] * dice.sum() / n_masks)

"""Foreground Jaccard and Dice of binary tasks, dataset level and per image."""
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.logging import print_log
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS

from .sod_metric import resolve_convention

FG_IOU_CONVENTIONS = {
    # This package's default: an image with neither true nor predicted
    # foreground is segmented perfectly (sklearn's zero_division=1).
    None: dict(empty_score=1.),
    # AutoGluon's Binary_IoU(_Pred): torchmetrics' JaccardIndex(task='binary')
    # per image, then the mean; its zero_division is 0.
    'autogluon': dict(empty_score=0.),
    # SAM2LoRA's utils/eval_metrics.py: get_iou and get_dice return 0 when
    # the union (the sum) is 0; the values are averaged over images.
    'sam2lora': dict(empty_score=0.),
}


@METRICS.register_module()
class ForegroundIoUMetric(IoUMetric):
    """mmseg's IoU metrics plus the foreground Jaccard and Dice of binary tasks.

    Papers on binary medical and natural-image benchmarks quote the
    foreground-class IoU ("Jaccard") and Dice, ×100. Two averages exist and
    both are reported:

    - ``Jaccard``/``Dice``: dataset level, from intersections and unions summed
      over all images (mmseg's convention);
    - ``Jaccard_per_img``/``Dice_per_img``: the mean of per-image values, as
      AutoGluon's Conv-LoRA evaluation (IoU: torchmetrics' binary
      ``JaccardIndex`` image by image) and the SAM2LoRA code (IoU and Dice
      per image) compute them.

    An image with neither predicted nor true foreground has no per-image
    value (0/0); it scores ``empty_score``: 1 by default (a correct empty
    prediction is perfect), 0 in torchmetrics (``zero_division=0``) and so in
    AutoGluon's numbers, and 0 in SAM2LoRA's code. ``convention`` sets it:
    None (1), ``'autogluon'`` (0) or ``'sam2lora'`` (0); an explicit
    ``empty_score`` overrides it. The dataset-level values are 0 only when
    the whole set has neither.

    Pixels at ``ignore_index`` never count.

    Args:
        foreground_index (int): Class index of the foreground. Defaults to 1.
        iou_metrics (list[str]): mmseg metrics also reported. Defaults to
            ``['mIoU', 'mDice']``.
        empty_score (float, optional): Per-image score of an image without
            true or predicted foreground. None: as ``convention`` says.
        convention (str, optional): None, ``'autogluon'`` or ``'sam2lora'``.
        **kwargs: Passed to :class:`mmseg.evaluation.IoUMetric`.
    """

    def __init__(self, foreground_index: int = 1,
                 iou_metrics: List[str] = ['mIoU', 'mDice'],
                 empty_score: Optional[float] = None,
                 convention: Optional[str] = None, **kwargs) -> None:
        super().__init__(iou_metrics=iou_metrics, **kwargs)
        opts = resolve_convention('ForegroundIoUMetric', convention, FG_IOU_CONVENTIONS,
                                  empty_score=empty_score)
        self.foreground_index = foreground_index
        self.empty_score = float(opts['empty_score'])
        self.convention = convention

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """mmseg's metrics plus the foreground Jaccard and Dice (×100)."""
        num_classes = len(self.dataset_meta['classes'])
        if not 0 <= self.foreground_index < num_classes:
            raise ValueError(f'foreground_index={self.foreground_index} is not a class of '
                             f'the dataset ({num_classes} classes).')
        metrics = super().compute_metrics(results)
        # Each result is one image's (intersect, union, pred_area, label_area) per class.
        inter, union, pred, label = (torch.stack([r[i][self.foreground_index] for r in results])
                                     .double() for i in range(4))
        empty = torch.full_like(inter, self.empty_score)
        per_img_iou = torch.where(union > 0, inter / union.clamp(min=1), empty)
        per_img_dice = torch.where(pred + label > 0, 2 * inter / (pred + label).clamp(min=1),
                                   empty)
        fg = OrderedDict(
            Jaccard=_pct(inter.sum() / union.sum().clamp(min=1)),
            Dice=_pct(2 * inter.sum() / (pred.sum() + label.sum()).clamp(min=1)),
            Jaccard_per_img=_pct(per_img_iou.mean()),
            Dice_per_img=_pct(per_img_dice.mean()))
        print_log(f'foreground (empty images score {self.empty_score:g}) ' +
                  ', '.join(f'{k}: {v:.2f}' for k, v in fg.items()), logger='current')
        metrics.update(fg)
        return metrics


def _pct(value: torch.Tensor) -> float:
    return float(np.round(value.item() * 100, 2))

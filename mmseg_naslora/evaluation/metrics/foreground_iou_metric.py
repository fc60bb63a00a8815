from collections import OrderedDict
from typing import Dict, List

import numpy as np
import torch
from mmengine.logging import print_log
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class ForegroundIoUMetric(IoUMetric):
    """mmseg's IoU metrics plus the foreground Jaccard and Dice of binary tasks.

    Papers on binary medical and natural-image benchmarks quote the
    foreground-class IoU ("Jaccard") and Dice, ×100. Two conventions exist and
    both are reported:

    - ``Jaccard``/``Dice``: dataset level, from intersections and unions summed
      over all images (mmseg's convention);
    - ``Jaccard_per_img``/``Dice_per_img``: the mean of per-image values
      (AutoGluon's Conv-LoRA convention). An image with neither predicted nor
      true foreground scores 1.

    Pixels at ``ignore_index`` never count.

    Args:
        foreground_index (int): Class index of the foreground. Defaults to 1.
        iou_metrics (list[str]): mmseg metrics also reported. Defaults to
            ``['mIoU', 'mDice']``.
        **kwargs: Passed to :class:`mmseg.evaluation.IoUMetric`.
    """

    def __init__(self, foreground_index: int = 1,
                 iou_metrics: List[str] = ['mIoU', 'mDice'], **kwargs) -> None:
        super().__init__(iou_metrics=iou_metrics, **kwargs)
        self.foreground_index = foreground_index

    def compute_metrics(self, results: list) -> Dict[str, float]:
        num_classes = len(self.dataset_meta['classes'])
        if not 0 <= self.foreground_index < num_classes:
            raise ValueError(f'foreground_index={self.foreground_index} is not a class of '
                             f'the dataset ({num_classes} classes).')
        metrics = super().compute_metrics(results)
        # Each result is one image's (intersect, union, pred_area, label_area) per class.
        inter, union, pred, label = (torch.stack([r[i][self.foreground_index] for r in results])
                                     .double() for i in range(4))
        per_img_iou = torch.where(union > 0, inter / union.clamp(min=1), 1.)
        per_img_dice = torch.where(pred + label > 0, 2 * inter / (pred + label).clamp(min=1), 1.)
        fg = OrderedDict(
            Jaccard=_pct(inter.sum() / union.sum().clamp(min=1)),
            Dice=_pct(2 * inter.sum() / (pred.sum() + label.sum()).clamp(min=1)),
            Jaccard_per_img=_pct(per_img_iou.mean()),
            Dice_per_img=_pct(per_img_dice.mean()))
        print_log('foreground ' + ', '.join(f'{k}: {v:.2f}' for k, v in fg.items()),
                  logger='current')
        metrics.update(fg)
        return metrics


def _pct(value: torch.Tensor) -> float:
    return float(np.round(value.item() * 100, 2))

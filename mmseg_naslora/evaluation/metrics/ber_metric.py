"""Balanced error rate, the shadow detection metric."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from .sod_metric import ACTIVATIONS, foreground_probability


@METRICS.register_module()
class BERMetric(BaseMetric):
    """Balanced error rate ``BER = 1 - (TPR + TNR) / 2``, lower is better.

    Vicente et al., ECCV 2016 (SBU Shadow). With ``average='image'`` (the
    default) BER is computed per image and averaged, as in AutoGluon's
    Conv-LoRA evaluation (1 - samplewise macro accuracy); ``'dataset'``
    pools TP/TN/P/N over all images first, as the classic shadow detection
    evaluation does. ``FNR = 1 - TPR`` (missed foreground, "shadow BER")
    and ``FPR = 1 - TNR`` ("non-shadow BER") are reported too.

    Per image, a rate whose class is absent from the GT is undefined and left
    out: an image with no foreground scores ``BER = FPR``; images without a
    single valid pixel are skipped. Pixels at ``ignore_index`` never count.

    The predicted mask is either mmseg's ``pred_sem_seg`` (``source='pred'``;
    for a sigmoid head that is already ``prob > decode_head.threshold``), or
    the foreground probability from ``seg_logits`` thresholded here
    (``source='score'``, ``prob > threshold``; AutoGluon's ``x*255 > 125``
    is ``threshold=125/255``).

    Args:
        source (str): ``'pred'`` or ``'score'``. Defaults to ``'pred'``.
        threshold (float): Foreground threshold of ``source='score'``.
            Defaults to 0.5.
        activation (str): How ``seg_logits`` become probabilities
            (``source='score'``); see :func:`foreground_probability`.
        foreground_index (int): Foreground class. Defaults to 1.
        ignore_index (int): GT value to ignore. Defaults to 255.
        average (str): ``'image'`` or ``'dataset'``. Defaults to ``'image'``.
        scale (float): Multiplier of the reported values. Defaults to 100.
        collect_device (str): Device for collecting results across ranks.
        prefix (str, optional): Prefix of the metric names.
    """

    def __init__(self,
                 source: str = 'pred',
                 threshold: float = 0.5,
                 activation: str = 'auto',
                 foreground_index: int = 1,
                 ignore_index: int = 255,
                 average: str = 'image',
                 scale: float = 100.,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if source not in ('pred', 'score'):
            raise ValueError(f"source must be 'pred' or 'score', got "
                             f'{source!r}.')
        if average not in ('image', 'dataset'):
            raise ValueError(f"average must be 'image' or 'dataset', got "
                             f'{average!r}.')
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {ACTIVATIONS}, got '
                             f'{activation!r}.')
        self.source = source
        self.threshold = threshold
        self.activation = activation
        self.foreground_index = foreground_index
        self.ignore_index = ignore_index
        self.average = average
        self.scale = float(scale)

    def predicted_mask(self, sample: dict) -> torch.Tensor:
        """Boolean ``(H, W)`` foreground prediction of one data sample."""
        if self.source == 'pred':
            pred = sample['pred_sem_seg']['data']
            return (pred.squeeze(0) if pred.dim() == 3 else pred) \
                == self.foreground_index
        if 'seg_logits' not in sample:
            raise KeyError("BERMetric(source='score') needs 'seg_logits' in "
                           'each data sample.')
        prob = foreground_probability(sample['seg_logits']['data'],
                                      self.activation, self.foreground_index)
        return prob > self.threshold

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Count TP, TN, positives and negatives of each image."""
        for sample in data_samples:
            pred = self.predicted_mask(sample).cpu()
            gt = sample['gt_sem_seg']['data'].cpu()
            gt = gt.squeeze(0) if gt.dim() == 3 else gt
            if pred.shape != gt.shape:
                raise ValueError(
                    f'Prediction is {tuple(pred.shape)} but gt_sem_seg is '
                    f'{tuple(gt.shape)} for '
                    f'{sample.get("img_path", "an image")}.')
            valid = gt != self.ignore_index
            pos = valid & (gt == self.foreground_index)
            neg = valid & ~pos
            self.results.append(
                np.array([(pred & pos).sum().item(), (~pred & neg).sum().item(),
                          pos.sum().item(), neg.sum().item()], np.int64))

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        """Reduce the counts to BER, FNR and FPR (scaled)."""
        counts = np.stack(results).astype(np.float64)
        tp, tn, p, n = counts.T
        if self.average == 'dataset':
            fnr = 1 - tp.sum() / p.sum() if p.sum() else np.nan
            fpr = 1 - tn.sum() / n.sum() if n.sum() else np.nan
            ber = np.nanmean([fnr, fpr])
        else:
            with np.errstate(invalid='ignore', divide='ignore'):
                fnr_i = np.where(p > 0, 1 - tp / p, np.nan)
                fpr_i = np.where(n > 0, 1 - tn / n, np.nan)
            scored = (p + n) > 0
            ber_i = np.nanmean(np.stack([fnr_i, fpr_i])[:, scored], axis=0)
            ber = ber_i.mean() if scored.any() else np.nan
            fnr = np.nanmean(fnr_i) if (p > 0).any() else np.nan
            fpr = np.nanmean(fpr_i) if (n > 0).any() else np.nan
        out = OrderedDict(BER=float(ber) * self.scale,
                          FNR=float(fnr) * self.scale,
                          FPR=float(fpr) * self.scale)
        print_log(
            f'BER ({self.average} average, x{self.scale:g}) over '
            f'{len(results)} images: ' +
            ', '.join(f'{k} {v:.2f}' for k, v in out.items()),
            logger='current')
        return out

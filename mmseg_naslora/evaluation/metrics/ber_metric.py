"""Balanced error rate, the shadow detection metric."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from .sod_metric import ACTIVATIONS, foreground_probability, resolve_convention

ABSENT_CLASS = ('skip', 'count')
BER_CONVENTIONS = {
    # This package's defaults: per image, a rate whose class is absent from
    # the GT is left out (1 - sklearn's balanced_accuracy_score per image).
    None: dict(source='pred', threshold=0.5, average='image',
               absent_class='skip'),
    # AutoGluon's Conv-LoRA evaluation (Balanced_Error_Rate_Pred): maps
    # thresholded at x*255 > 125, then 1 - torchmetrics' multiclass macro
    # accuracy, samplewise. torchmetrics gives a class weight 0 only when it
    # is neither in the GT nor predicted, and recall 0 to a class predicted
    # but absent from the GT.
    'autogluon': dict(source='score', threshold=125 / 255, average='image',
                      absent_class='count'),
}


@METRICS.register_module()
class BERMetric(BaseMetric):
    """Balanced error rate ``BER = 1 - (TPR + TNR) / 2``, lower is better.

    Vicente et al., ECCV 2016 (SBU Shadow). ``FNR = 1 - TPR`` (missed
    foreground, "shadow BER") and ``FPR = 1 - TNR`` ("non-shadow BER") are
    reported too. With ``average='image'`` BER is computed per image and
    averaged; ``'dataset'`` pools TP/TN/P/N over all images first, as the
    classic shadow detection evaluation does. Pixels at ``ignore_index``
    never count.

    A class absent from an image's GT leaves its rate undefined;
    ``absent_class`` says what to do with it:

    - ``'skip'`` (default): the rate is left out, so an image without
      foreground scores ``BER = FPR``; this is ``1 -
      sklearn.metrics.balanced_accuracy_score`` of the image;
    - ``'count'``: as torchmetrics' macro accuracy, which AutoGluon's
      Conv-LoRA evaluation uses: the class still counts, with error rate 1,
      when it is predicted somewhere; it is left out only when it is neither
      in the GT nor predicted. An image without shadow and 1 % false
      positives scores BER 50.5 there and 1.0 with ``'skip'``.

    With ``'count'``, ``FNR``/``FPR`` are the two per-class error rates that
    enter the BER (FNR is 1 for an image without foreground but with
    foreground predictions).

    The predicted mask is either mmseg's ``pred_sem_seg`` (``source='pred'``;
    for a sigmoid head that is already ``prob > decode_head.threshold``), or
    the foreground probability from ``seg_logits`` thresholded here
    (``source='score'``, ``prob > threshold``; AutoGluon's ``x*255 > 125``
    is ``threshold=125/255``).

    ``convention`` sets the defaults of ``source``, ``threshold``,
    ``average`` and ``absent_class`` at once; options given explicitly
    override it. None: ``'pred'``, 0.5, ``'image'``, ``'skip'``.
    ``'autogluon'``: ``'score'``, 125/255, ``'image'``, ``'count'``.

    Args:
        source (str, optional): ``'pred'`` or ``'score'``.
        threshold (float, optional): Foreground threshold of
            ``source='score'``.
        activation (str): How ``seg_logits`` become probabilities
            (``source='score'``); see :func:`foreground_probability`.
        foreground_index (int): Foreground class. Defaults to 1.
        ignore_index (int): GT value to ignore. Defaults to 255.
        average (str, optional): ``'image'`` or ``'dataset'``.
        absent_class (str, optional): ``'skip'`` or ``'count'``.
        scale (float): Multiplier of the reported values. Defaults to 100.
        convention (str, optional): None (this package's defaults) or
            ``'autogluon'``.
        collect_device (str): Device for collecting results across ranks.
        prefix (str, optional): Prefix of the metric names.
    """

    def __init__(self,
                 source: Optional[str] = None,
                 threshold: Optional[float] = None,
                 activation: str = 'auto',
                 foreground_index: int = 1,
                 ignore_index: int = 255,
                 average: Optional[str] = None,
                 absent_class: Optional[str] = None,
                 scale: float = 100.,
                 convention: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        opts = resolve_convention('BERMetric', convention, BER_CONVENTIONS,
                                  source=source, threshold=threshold,
                                  average=average, absent_class=absent_class)
        if opts['source'] not in ('pred', 'score'):
            raise ValueError(f"source must be 'pred' or 'score', got "
                             f'{opts["source"]!r}.')
        if opts['average'] not in ('image', 'dataset'):
            raise ValueError(f"average must be 'image' or 'dataset', got "
                             f'{opts["average"]!r}.')
        if opts['absent_class'] not in ABSENT_CLASS:
            raise ValueError(f'absent_class must be one of {ABSENT_CLASS}, '
                             f'got {opts["absent_class"]!r}.')
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {ACTIVATIONS}, got '
                             f'{activation!r}.')
        self.convention = convention
        self.source = opts['source']
        self.threshold = float(opts['threshold'])
        self.average = opts['average']
        self.absent_class = opts['absent_class']
        self.activation = activation
        self.foreground_index = foreground_index
        self.ignore_index = ignore_index
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

    def error_rates(self, tp: np.ndarray, tn: np.ndarray, p: np.ndarray,
                    n: np.ndarray):
        """Per-class error rates (FNR, FPR), NaN where a rate is left out.

        Args:
            tp (np.ndarray): True positives (per image, or pooled).
            tn (np.ndarray): True negatives.
            p (np.ndarray): GT positives.
            n (np.ndarray): GT negatives.

        Returns:
            tuple[np.ndarray, np.ndarray]: FNR and FPR.
        """
        with np.errstate(invalid='ignore', divide='ignore'):
            fnr = np.where(p > 0, 1 - tp / p, np.nan)
            fpr = np.where(n > 0, 1 - tn / n, np.nan)
        if self.absent_class == 'count':
            # torchmetrics: recall 0 (error 1) for a class that is predicted
            # (FP = N - TN or FN = P - TP) but absent from the GT.
            fnr = np.where((p == 0) & (n - tn > 0), 1., fnr)
            fpr = np.where((n == 0) & (p - tp > 0), 1., fpr)
        return fnr, fpr

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        """Reduce the counts to BER, FNR and FPR (scaled)."""
        counts = np.stack(results).astype(np.float64)
        if self.average == 'dataset':
            counts = counts.sum(0, keepdims=True)
        fnr_i, fpr_i = self.error_rates(*counts.T)
        rates = np.stack([fnr_i, fpr_i])
        scored = ~np.isnan(rates).all(0)  # images without a valid pixel
        ber = np.nanmean(rates[:, scored], axis=0).mean() \
            if scored.any() else np.nan
        fnr = np.nanmean(fnr_i) if (~np.isnan(fnr_i)).any() else np.nan
        fpr = np.nanmean(fpr_i) if (~np.isnan(fpr_i)).any() else np.nan
        out = OrderedDict(BER=float(ber) * self.scale,
                          FNR=float(fnr) * self.scale,
                          FPR=float(fpr) * self.scale)
        print_log(
            f'BER ({self.average} average, absent class {self.absent_class}'
            f', x{self.scale:g}) over {len(results)} images: ' +
            ', '.join(f'{k} {v:.2f}' for k, v in out.items()),
            logger='current')
        return out

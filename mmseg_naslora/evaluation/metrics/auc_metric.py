"""Pixel-level ROC AUC of the foreground probability, pooled or per image."""
import logging
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS
from scipy.stats import rankdata

from .sod_metric import resolve_convention

AUC_CONVENTIONS = {
    None: dict(average='dataset'),
    # SAM2LoRA's utils/eval_metrics.py + test.py: roc_auc_score per image,
    # then the mean over images.
    'sam2lora': dict(average='image'),
}


@METRICS.register_module()
class AUCMetric(BaseMetric):
    """Area under the ROC curve of the per-pixel foreground score, ×100.

    Retinal vessel and optic-disc papers report it in one of two ways,
    selected by ``average``:

    - ``'dataset'`` (default): the pixels of all images are pooled
      (concatenated) and ranked by their foreground score, one AUC;
    - ``'image'``: one AUC per image, then their mean, as the SAM2LoRA code
      does (Mandal et al., 2025: ``sklearn.metrics.roc_auc_score`` of each
      image's flattened map in ``utils/eval_metrics.py``, averaged over the
      test images in ``test.py``). An image whose counted pixels are all of
      one class has no AUC (older scikit-learn raises, newer returns NaN,
      which would make the reference's mean NaN); it is left out of the mean
      and counted in the log.

    ``convention='sam2lora'`` is ``average='image'``. Pixels labelled
    ``ignore_index`` never count. Ties count one half (the Mann-Whitney
    form, equal to ``sklearn.metrics.roc_auc_score``).

    The score is read from ``seg_logits`` at the original image size, as
    mmseg's segmentors store it: for a 1-channel (sigmoid) head it already is
    the foreground probability; for a ``K``-channel head the softmax over the
    channels is taken and its ``foreground_index`` channel used.

    Memory: the exact pooled mode keeps every counted pixel's score (float32)
    and label (bool) until the end, 5 bytes per pixel (DRIVE's 20 test
    images: about 33 MB; HRF's full-size images: about 40 MB each). For large
    sets, ``num_bins`` switches to constant memory per image: scores in
    [0, 1] are counted in ``num_bins`` equal bins per class, and pixel pairs
    that share a bin count as ties. The largest possible error of that
    approximation is computed and logged. The per-image mode keeps one number
    per image (binned per image when ``num_bins`` is set).

    Args:
        foreground_index (int): Class whose score is ranked; every other
            non-ignored label is negative. Defaults to 1.
        ignore_index (int): Label of pixels left out. Defaults to 255.
        num_bins (int, optional): Histogram bins of the binned mode; None
            (default) computes the exact AUC.
        average (str, optional): ``'dataset'`` or ``'image'``. None: as
            ``convention`` says (``'dataset'`` by default).
        convention (str, optional): None (pooled) or ``'sam2lora'``
            (per image).
        collect_device (str): ``'cpu'`` or ``'gpu'``. Defaults to 'cpu'.
        prefix (str, optional): Prefix of the metric name.
    """

    def __init__(self,
                 foreground_index: int = 1,
                 ignore_index: int = 255,
                 num_bins: Optional[int] = None,
                 average: Optional[str] = None,
                 convention: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_bins is not None and num_bins < 2:
            raise ValueError(f'AUCMetric num_bins must be None (exact) or >= 2, got {num_bins}.')
        opts = resolve_convention('AUCMetric', convention, AUC_CONVENTIONS, average=average)
        if opts['average'] not in ('dataset', 'image'):
            raise ValueError(f"AUCMetric average must be 'dataset' or 'image', got "
                             f"{opts['average']!r}.")
        self.foreground_index = foreground_index
        self.ignore_index = ignore_index
        self.num_bins = num_bins
        self.average = opts['average']

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Keep each image's pixels (exact pooled), histograms (binned) or AUC (per image)."""
        for sample in data_samples:
            score, label = self._pixels(sample)
            if self.num_bins is None:
                if self.average == 'image':
                    # One number per image; NaN (left out) for one-class images.
                    self.results.append(exact_auc(score.numpy(), label.numpy(), warn=False))
                else:
                    self.results.append((score.numpy(), label.numpy()))
            else:
                bins = (score * self.num_bins).long().clamp_(0, self.num_bins - 1)
                pos = torch.bincount(bins[label], minlength=self.num_bins)
                neg = torch.bincount(bins[~label], minlength=self.num_bins)
                if self.average == 'image':
                    self.results.append(binned_auc(pos.numpy(), neg.numpy(), warn=False)[0])
                else:
                    self.results.append((pos.numpy(), neg.numpy()))

    def _pixels(self, sample: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Foreground scores and 0/1 labels of the counted pixels of one image."""
        if 'seg_logits' not in sample:
            raise KeyError('AUCMetric needs the per-pixel scores `seg_logits` of each '
                           'prediction; it cannot score a model (or TTA wrapper) that '
                           'only returns pred_sem_seg.')
        logits = sample['seg_logits']['data'].float()
        gt = sample['gt_sem_seg']['data'].squeeze(0).to(logits.device)
        if logits.shape[0] == 1:
            score = logits[0]  # mmseg has applied the sigmoid already
        else:
            if not 0 <= self.foreground_index < logits.shape[0]:
                raise ValueError(f'foreground_index={self.foreground_index} is not a '
                                 f'channel of the {logits.shape[0]}-channel prediction.')
            score = logits.softmax(0)[self.foreground_index]
        if score.shape != gt.shape:
            raise ValueError(f'AUCMetric: scores {tuple(score.shape)} and labels '
                             f'{tuple(gt.shape)} differ in size.')
        valid = gt != self.ignore_index
        return score[valid].cpu(), (gt[valid] == self.foreground_index).cpu()

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """The pooled AUC, or the mean of the per-image AUCs, ×100."""
        if self.average == 'image':
            per_img = np.asarray(results, np.float64)
            defined = ~np.isnan(per_img)
            if not defined.any():
                print_log(f'AUC is undefined for all {len(per_img)} images (each has one '
                          'class only); reporting NaN.', logger='current',
                          level=logging.WARNING)
                return OrderedDict(AUC=float('nan'))
            auc = per_img[defined].mean()
            note = f'mean of {int(defined.sum())} per-image AUCs'
            if not defined.all():
                note += f', {int((~defined).sum())} one-class images left out'
            if self.num_bins is not None:
                note += f', {self.num_bins} bins each'
        elif self.num_bins is None:
            auc = exact_auc(np.concatenate([r[0] for r in results]),
                            np.concatenate([r[1] for r in results]))
            note = 'exact'
        else:
            pos = np.sum([r[0] for r in results], axis=0, dtype=np.int64)
            neg = np.sum([r[1] for r in results], axis=0, dtype=np.int64)
            auc, bound = binned_auc(pos, neg)
            note = f'{self.num_bins} bins, error at most {bound * 100:.3g}'
        value = float(np.round(auc * 100, 2))
        print_log(f'AUC ({self.average} average): {value:.2f} ({note})', logger='current')
        return OrderedDict(AUC=value)


def exact_auc(score: np.ndarray, label: np.ndarray, warn: bool = True) -> float:
    """ROC AUC from average ranks (Mann-Whitney U / (P·N)); NaN if a class is absent.

    Args:
        score (np.ndarray): Scores of the pixels.
        label (np.ndarray): Their 0/1 labels.
        warn (bool): Log a warning when the AUC is undefined. Defaults to True.

    Returns:
        float: The AUC in [0, 1], or NaN.
    """
    label = label.astype(bool)
    num_pos = int(label.sum())
    num_neg = label.size - num_pos
    if num_pos == 0 or num_neg == 0:
        if warn:
            _warn_one_class(num_pos, num_neg)
        return float('nan')
    ranks = rankdata(score, method='average')
    u = ranks[label].sum() - num_pos * (num_pos + 1) / 2
    return float(u / (num_pos * num_neg))


def binned_auc(pos: np.ndarray, neg: np.ndarray, warn: bool = True) -> Tuple[float, float]:
    """ROC AUC from per-bin positive/negative counts, and its largest possible error.

    Positives in a higher bin than a negative count 1, in the same bin 1/2.
    Pairs within one bin could be ordered either way, so the exact AUC is
    within ``Σ_b pos_b·neg_b / (2·P·N)`` of the result.
    """
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    num_pos, num_neg = pos.sum(), neg.sum()
    if num_pos == 0 or num_neg == 0:
        if warn:
            _warn_one_class(int(num_pos), int(num_neg))
        return float('nan'), float('nan')
    neg_below = np.cumsum(neg) - neg
    pairs = num_pos * num_neg
    auc = (pos * neg_below).sum() / pairs + 0.5 * (pos * neg).sum() / pairs
    return float(auc), float(0.5 * (pos * neg).sum() / pairs)


def _warn_one_class(num_pos: int, num_neg: int) -> None:
    print_log(f'AUC is undefined with {num_pos} positive and {num_neg} negative pixels; '
              'reporting NaN.', logger='current', level=logging.WARNING)

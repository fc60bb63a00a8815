"""BERMetric against balanced error rates computed by hand."""
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmseg_naslora.evaluation.metrics.ber_metric import BERMetric

# Three 1x4 images (255 = ignore):
#   1: TPR 1/2, TNR 1/2         -> BER 1/2
#   2: no foreground, TNR 3/4   -> BER = FPR = 1/4
#   3: TPR 2/3, no background   -> BER = FNR = 1/3
GTS = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 255]]
PREDS = [[1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1]]


def sample(gt, pred=None, seg_logits=None):
    s = SegDataSample()
    s.gt_sem_seg = PixelData(data=torch.tensor([gt]))
    if pred is not None:
        s.pred_sem_seg = PixelData(data=torch.tensor([pred]))
    if seg_logits is not None:
        s.seg_logits = PixelData(data=torch.tensor(seg_logits).float())
    return s.to_dict()


def run(metric, samples):
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_per_image_average_by_hand():
    res = run(BERMetric(), [sample([g], [p]) for g, p in zip(GTS, PREDS)])
    assert res['BER'] == pytest.approx(100 * (1 / 2 + 1 / 4 + 1 / 3) / 3)
    assert res['FNR'] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)
    assert res['FPR'] == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)


def test_dataset_average_by_hand():
    res = run(BERMetric(average='dataset', scale=1.),
              [sample([g], [p]) for g, p in zip(GTS, PREDS)])
    # TP 3 of P 5, TN 4 of N 6.
    assert res['BER'] == pytest.approx(1 - (3 / 5 + 4 / 6) / 2)
    assert res['FNR'] == pytest.approx(2 / 5)
    assert res['FPR'] == pytest.approx(2 / 6)


def test_perfect_and_inverted():
    gt = [[0, 1, 1, 0], [1, 0, 0, 0]]
    assert run(BERMetric(), [sample(gt, gt)])['BER'] == 0
    inverted = (1 - np.array(gt)).tolist()
    assert run(BERMetric(), [sample(gt, inverted)])['BER'] == 100


def test_thresholded_scores():
    gt = [[1, 1, 0, 0]]
    prob = [[[0.9, 0.5, 0.2, 0.6]]]
    # prob > 0.5: [1, 0, 0, 1] -> TPR 1/2, TNR 1/2.
    res = run(BERMetric(source='score', scale=1.), [sample(gt,
                                                           seg_logits=prob)])
    assert res['BER'] == pytest.approx(0.5)
    # prob > 0.55 still keeps 0.6; prob > 0.7 drops it: TNR 1.
    res = run(BERMetric(source='score', threshold=0.7, scale=1.),
              [sample(gt, seg_logits=prob)])
    assert res['BER'] == pytest.approx(1 - (0.5 + 1) / 2)
    # Two-channel logits go through softmax: fg wins where l1 > l0.
    logits = [[[0, 0, 0, 0]], [[2, 1, -1, -2]]]
    res = run(BERMetric(source='score', scale=1.),
              [sample(gt, seg_logits=logits)])
    assert res['BER'] == pytest.approx(0)


def test_foreground_index_and_errors():
    gt = [[2, 2, 0, 1]]
    pred = [[2, 0, 0, 2]]
    # Foreground = class 2: TPR 1/2; background (0, 1): TNR 1/2.
    res = run(BERMetric(foreground_index=2, scale=1.), [sample(gt, pred)])
    assert res['BER'] == pytest.approx(0.5)
    with pytest.raises(ValueError, match='source'):
        BERMetric(source='logits')
    with pytest.raises(ValueError, match='average'):
        BERMetric(average='class')
    with pytest.raises(ValueError, match=r'\(1, 3\)'):
        BERMetric().process({}, [sample([[0, 1, 1, 0]], [[0, 1, 1]])])

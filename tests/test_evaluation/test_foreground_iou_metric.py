import pytest
import torch

from mmseg_naslora.evaluation.metrics import ForegroundIoUMetric


def run_metric(pairs, **kwargs):
    metric = ForegroundIoUMetric(**kwargs)
    metric.dataset_meta = dict(classes=('background', 'fg'))
    for pred, gt in pairs:
        metric.process({}, [dict(pred_sem_seg=dict(data=torch.tensor(pred)[None]),
                                 gt_sem_seg=dict(data=torch.tensor(gt)[None]))])
    return metric.compute_metrics(metric.results)


def test_dataset_level_and_per_image_values_by_hand():
    # image 1: pred 2 fg px, gt 4 fg px, 2 overlap -> IoU 2/4, Dice 4/6
    # image 2: pred 4, gt 1, overlap 1 -> IoU 1/4, Dice 2/5
    pairs = [([[1, 1, 0, 0], [0, 0, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0]]),
             ([[1, 1, 0, 0], [1, 1, 0, 0]], [[1, 0, 0, 0], [0, 0, 0, 0]])]
    m = run_metric(pairs)
    assert m['Jaccard'] == pytest.approx(100 * 3 / 8, abs=0.01)  # (2+1)/(4+4)
    assert m['Dice'] == pytest.approx(100 * 6 / 11, abs=0.01)  # 2*3/(6+5)
    assert m['Jaccard_per_img'] == pytest.approx(100 * (0.5 + 0.25) / 2, abs=0.01)
    assert m['Dice_per_img'] == pytest.approx(100 * (4 / 6 + 2 / 5) / 2, abs=0.01)
    assert 'mIoU' in m and 'mDice' in m
    # Background: intersections 4+4 over unions 6+7.
    assert m['mIoU'] == pytest.approx((m['Jaccard'] + 100 * 8 / 13) / 2, abs=0.02)


def test_per_image_mean_differs_from_dataset_level():
    # A large perfect image and a small missed one: dataset-level barely moves.
    big = [[1] * 8] * 8
    pairs = [(big, big), ([[0, 0], [0, 0]], [[1, 0], [0, 0]])]
    m = run_metric(pairs)
    assert m['Jaccard'] == pytest.approx(100 * 64 / 65, abs=0.01)
    assert m['Jaccard_per_img'] == pytest.approx(50.0)


def test_ignore_pixels_and_empty_images():
    pairs = [([[1, 1], [0, 0]], [[255, 1], [0, 0]]),  # the ignored fg prediction never counts
             ([[0, 0], [0, 0]], [[0, 0], [0, 0]])]  # no fg anywhere: scores 1
    m = run_metric(pairs)
    assert m['Jaccard'] == 100.0
    assert m['Jaccard_per_img'] == 100.0 and m['Dice_per_img'] == 100.0


def test_foreground_index_must_be_a_class():
    with pytest.raises(ValueError, match='foreground_index=3'):
        run_metric([([[0]], [[0]])], foreground_index=3)

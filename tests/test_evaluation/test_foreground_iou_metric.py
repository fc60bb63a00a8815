import numpy as np
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


def thresholded_set(seed=0):
    """Probability maps (a sigmoid head's) and GTs, two images without foreground."""
    rng = np.random.default_rng(seed)
    probs, gts = [], []
    for i in range(6):
        gt = np.zeros((12, 12), np.int64)
        if i >= 2:
            gt[i:i + 5, 2:2 + i] = 1
        prob = np.clip(0.5 * gt + rng.normal(0.25, 0.2, gt.shape), 0, 1)
        if i < 2:
            prob = np.full(gt.shape, 0.1)  # empty truth, empty prediction
        probs.append(prob.astype(np.float32))
        gts.append(gt)
    return probs, gts


def run_on_probs(probs, gts, **kwargs):
    # mmseg's sigmoid head: pred_sem_seg = prob > threshold (0.5).
    return run_metric([((p > 0.5).astype(np.int64).tolist(), g.tolist())
                       for p, g in zip(probs, gts)], **kwargs)


def test_autogluon_convention_matches_torchmetrics_binary_jaccard():
    import torchmetrics
    probs, gts = thresholded_set()
    # AutoGluon's Binary_IoU_Pred: one JaccardIndex(task='binary') called per image.
    jaccard = torchmetrics.JaccardIndex(task='binary')
    ref_iou = torch.stack([jaccard(torch.tensor(p)[None], torch.tensor(g)[None])
                           for p, g in zip(probs, gts)]).mean().item()
    f1 = torchmetrics.F1Score(task='binary')  # Dice of a binary mask
    ref_dice = torch.stack([f1(torch.tensor(p)[None], torch.tensor(g)[None])
                            for p, g in zip(probs, gts)]).mean().item()
    m = run_on_probs(probs, gts, convention='autogluon')
    assert m['Jaccard_per_img'] == pytest.approx(100 * ref_iou, abs=0.005)
    assert m['Dice_per_img'] == pytest.approx(100 * ref_dice, abs=0.005)
    # Dataset level: one binary Jaccard over all pixels.
    pooled = torchmetrics.functional.jaccard_index(
        torch.tensor(np.stack(probs)), torch.tensor(np.stack(gts)), task='binary').item()
    assert m['Jaccard'] == pytest.approx(100 * pooled, abs=0.005)
    # The default scores the two empty images 1: 2 of 6 images, a third of 100 apart.
    default = run_on_probs(probs, gts)
    assert default['Jaccard_per_img'] - m['Jaccard_per_img'] == pytest.approx(100 * 2 / 6,
                                                                              abs=0.01)
    assert default['Jaccard'] == m['Jaccard']


def test_conventions_match_sklearn_zero_division():
    from sklearn.metrics import f1_score, jaccard_score
    probs, gts = thresholded_set(seed=1)
    preds = [(p > 0.5).astype(np.int64).ravel() for p in probs]
    for kwargs, zero_division in ((dict(), 1.0), (dict(convention='sam2lora'), 0.0),
                                  (dict(empty_score=0.), 0.0),
                                  (dict(convention='sam2lora', empty_score=1.), 1.0)):
        m = run_on_probs(probs, gts, **kwargs)
        iou = np.mean([jaccard_score(g.ravel(), p, zero_division=zero_division)
                       for p, g in zip(preds, gts)])
        dice = np.mean([f1_score(g.ravel(), p, zero_division=zero_division)
                        for p, g in zip(preds, gts)])
        assert m['Jaccard_per_img'] == pytest.approx(100 * iou, abs=0.005), kwargs
        assert m['Dice_per_img'] == pytest.approx(100 * dice, abs=0.005), kwargs
    with pytest.raises(ValueError, match='convention'):
        ForegroundIoUMetric(convention='pranet')

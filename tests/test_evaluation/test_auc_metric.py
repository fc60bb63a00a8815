import math

import numpy as np
import pytest
import torch

from mmseg_naslora.evaluation.metrics.auc_metric import AUCMetric, binned_auc, exact_auc


def run_metric(pairs, **kwargs):
    """``pairs``: (scores (C, H, W) as mmseg stores them, labels (H, W)) per image."""
    metric = AUCMetric(**kwargs)
    for score, gt in pairs:
        metric.process({}, [dict(seg_logits=dict(data=torch.tensor(score, dtype=torch.float)),
                                 gt_sem_seg=dict(data=torch.tensor(gt)[None]))])
    return metric.compute_metrics(metric.results)['AUC']


def test_pooled_auc_by_hand_with_ignored_pixels():
    # Pooled positives 0.35, 0.8, 0.6; negatives 0.1, 0.4, 0.7 (0.9 is ignored).
    # Pairs won: 0.35 > 0.1; 0.8 > all 3; 0.6 > 0.1, 0.4 -> 6 of 9.
    pairs = [([[[0.1, 0.4], [0.35, 0.8]]], [[0, 0], [1, 1]]),
             ([[[0.6, 0.7], [0.9, 0.9]]], [[1, 0], [255, 255]])]
    assert run_metric(pairs) == pytest.approx(100 * 6 / 9, abs=0.01)
    # The first image alone is the textbook example: 3 of 4 pairs.
    assert run_metric(pairs[:1]) == 75.0


def test_ties_count_one_half():
    assert run_metric([([[[0.5, 0.5, 0.2]]], [[1, 0, 0]])]) == 75.0  # 1/2 + 1 of 2 pairs


def test_exact_equals_sklearn_on_random_scores():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    label = rng.random(5000) < 0.3
    score = np.round(np.clip(0.3 * label + rng.random(5000) * 0.8, 0, 1), 3)  # with ties
    assert exact_auc(score, label) == pytest.approx(roc_auc_score(label, score), abs=1e-12)


def test_binned_auc_is_exact_when_no_bin_is_shared_and_bounded_otherwise():
    # Scores on distinct bins of 10: exact.
    pairs = [([[[0.05, 0.45], [0.35, 0.85]]], [[0, 0], [1, 1]])]
    assert run_metric(pairs, num_bins=10) == 75.0
    rng = np.random.default_rng(1)
    label = rng.random(20000) < 0.2
    score = np.clip(0.25 * label + rng.random(20000) * 0.75, 0, 1)
    exact = exact_auc(score, label)
    bounds = []
    for bins in (20, 1000):
        idx = np.minimum((score * bins).astype(int), bins - 1)
        pos = np.bincount(idx[label], minlength=bins)
        neg = np.bincount(idx[~label], minlength=bins)
        auc, bound = binned_auc(pos, neg)
        assert abs(auc - exact) <= bound
        bounds.append(bound)
    assert bounds[1] < 1e-3 < 0.01 < bounds[0]  # shared bins shrink with their width
    # Through the metric, pixel-for-pixel the same data.
    metric_auc = run_metric([(score.reshape(1, 100, 200), label.reshape(100, 200).astype(int))],
                            num_bins=1000)
    assert metric_auc == pytest.approx(100 * exact, abs=0.1)


def test_multichannel_scores_use_the_foreground_softmax():
    # softmax(l)[1] = sigmoid(l1 - l0): ordering by l1 - l0 = -1, 2, 0.5, -3.
    logits = [[[0.0, 0.0], [0.0, 3.0]], [[-1.0, 2.0], [0.5, 0.0]]]
    gt = [[0, 1], [1, 0]]
    assert run_metric([(logits, gt)]) == 100.0
    # Class 0 as foreground: scores and labels both flip, so the ranking stays perfect;
    # flipping only the labels makes it perfectly wrong.
    assert run_metric([(logits, gt)], foreground_index=0) == 100.0
    assert run_metric([(logits, [[1, 0], [0, 1]])], foreground_index=0) == 0.0


def test_undefined_auc_and_missing_scores():
    assert math.isnan(run_metric([([[[0.2, 0.9]]], [[0, 0]])]))
    assert math.isnan(run_metric([([[[0.2, 0.9]]], [[1, 1]])], num_bins=10))
    metric = AUCMetric()
    with pytest.raises(KeyError, match='seg_logits'):
        metric.process({}, [dict(pred_sem_seg=dict(data=torch.zeros(1, 2, 2)),
                                 gt_sem_seg=dict(data=torch.zeros(1, 2, 2)))])
    with pytest.raises(ValueError, match='num_bins'):
        AUCMetric(num_bins=1)


def vessel_like_set(seed=2, n=5, size=(24, 32)):
    """Per-image scores of different quality, so per-image and pooled AUC differ."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        label = rng.random(size) < 0.1 + 0.05 * i
        # Image i separates better, and its scores are shifted by i / 10.
        score = np.clip(0.1 * i + (0.2 + 0.1 * i) * label + 0.5 * rng.random(size), 0, 1)
        pairs.append((score[None].astype(np.float32), label.astype(np.int64)))
    return pairs


def test_per_image_average_matches_sklearn_roc_auc_score():
    from sklearn.metrics import roc_auc_score
    pairs = vessel_like_set()
    # SAM2LoRA: roc_auc_score of each flattened image, then the mean.
    per_img = np.mean([roc_auc_score(gt.ravel(), score[0].ravel()) for score, gt in pairs])
    ours = run_metric(pairs, convention='sam2lora')
    assert ours == pytest.approx(100 * per_img, abs=0.005)
    assert run_metric(pairs, average='image') == ours
    # The default pools the pixels: roc_auc_score of the concatenation.
    pooled = roc_auc_score(np.concatenate([gt.ravel() for _, gt in pairs]),
                           np.concatenate([score.ravel() for score, _ in pairs]))
    assert run_metric(pairs) == pytest.approx(100 * pooled, abs=0.005)
    assert abs(per_img - pooled) > 0.01  # the set is built so that the two differ
    # Binned per image: within the bins' error of the exact value.
    assert run_metric(pairs, convention='sam2lora', num_bins=10000) == pytest.approx(
        100 * per_img, abs=0.05)


def test_per_image_leaves_one_class_images_out():
    from sklearn.metrics import roc_auc_score
    pairs = vessel_like_set(n=2)
    empty = (np.full((1, 24, 32), 0.3, np.float32), np.zeros((24, 32), np.int64))
    # scikit-learn has no AUC for it (older versions raise, newer ones warn and give NaN).
    with pytest.warns(Warning, match='one class'):
        assert math.isnan(roc_auc_score(empty[1].ravel(), empty[0].ravel()))
    expected = np.mean([roc_auc_score(gt.ravel(), s[0].ravel()) for s, gt in pairs])
    assert run_metric(pairs + [empty], average='image') == pytest.approx(100 * expected, abs=0.005)
    assert math.isnan(run_metric([empty], average='image'))
    with pytest.raises(ValueError, match='convention'):
        AUCMetric(convention='drive')
    with pytest.raises(ValueError, match='average'):
        AUCMetric(average='pixel')

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


def balanced_error_reference(preds, gts, library):
    """Per-image BER from a library, averaged over images.

    ``'sklearn'``: 1 - ``balanced_accuracy_score``, which averages the
    recall of the classes present in the GT (this package's default).
    ``'torchmetrics'``: AutoGluon's ``Balanced_Error_Rate_Pred``, 1 -
    multiclass macro accuracy, samplewise.
    """
    if library == 'sklearn':
        import warnings

        from sklearn.metrics import balanced_accuracy_score
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "y_pred contains classes not in y_true"
            return np.mean([1 - balanced_accuracy_score(np.ravel(g), np.ravel(p))
                            for p, g in zip(preds, gts)])
    import torchmetrics
    acc = torchmetrics.Accuracy(task='multiclass', num_classes=2, average='macro',
                                multidim_average='samplewise')
    ber = 1 - acc(torch.tensor(np.stack(preds))[:, None], torch.tensor(np.stack(gts))[:, None])
    return ber.mean().item()


def random_shadow_set(seed=0, size=20):
    """Probability maps and GTs, with the corner cases of absent classes."""
    rng = np.random.default_rng(seed)
    gts, probs = [], []
    for i in range(8):
        gt = np.zeros((size, size), np.int64)
        if i not in (0, 1):  # images 0 and 1 have no shadow
            gt[rng.integers(0, 8):rng.integers(10, size), rng.integers(0, 8):] = 1
        if i == 7:
            gt[:] = 1  # all shadow
        prob = np.clip(0.6 * gt + rng.normal(0.2, 0.25, gt.shape), 0, 1)
        if i == 1:
            prob = np.full(gt.shape, 0.1)  # no shadow and no false positive
        gts.append(gt)
        probs.append(prob)
    return gts, probs


def test_autogluon_convention_matches_torchmetrics():
    gts, probs = random_shadow_set()
    samples = [sample(g.tolist(), seg_logits=p[None].tolist()) for g, p in zip(gts, probs)]
    preds = [(p * 255 > 125).astype(np.int64) for p in probs]  # AutoGluon's binarisation
    assert preds[0].any() and not preds[1].any() and not preds[7].all()
    ours = run(BERMetric(convention='autogluon', scale=1.), samples)
    ref = balanced_error_reference(preds, gts, 'torchmetrics')
    assert ours['BER'] == pytest.approx(ref, abs=1e-6)
    # The default drops the absent class: 1 - sklearn's balanced accuracy.
    default = run(BERMetric(source='score', threshold=125 / 255, scale=1.), samples)
    assert default['BER'] == pytest.approx(balanced_error_reference(preds, gts, 'sklearn'))
    assert ours['BER'] - default['BER'] > 0.05  # image 0 and 7 score ~0.5 more each


def test_no_shadow_with_one_percent_false_positives():
    gt = np.zeros((10, 10), np.int64)
    prob = np.zeros((1, 10, 10))
    prob[0, 0, 0] = 0.9
    pred = (prob[0] > 0.5).astype(np.int64)
    assert run(BERMetric(), [sample(gt.tolist(), pred.tolist())])['BER'] == pytest.approx(1.0)
    ag = run(BERMetric(convention='autogluon'), [sample(gt.tolist(), seg_logits=prob.tolist())])
    assert ag['BER'] == pytest.approx(50.5)
    assert ag['BER'] == pytest.approx(
        100 * balanced_error_reference([pred], [gt], 'torchmetrics'), abs=1e-4)
    # absent_class='count' on pred_sem_seg gives the same; FNR is the shadow-class error.
    counted = run(BERMetric(absent_class='count'), [sample(gt.tolist(), pred.tolist())])
    assert (counted['BER'], counted['FNR'], counted['FPR']) == pytest.approx((50.5, 100, 1))


def test_default_matches_sklearn_per_image_and_pooled():
    gts, probs = random_shadow_set(seed=1)
    preds = [(p > 0.5).astype(np.int64) for p in probs]
    samples = [sample(g.tolist(), p.tolist()) for g, p in zip(gts, preds)]
    res = run(BERMetric(scale=1.), samples)
    assert res['BER'] == pytest.approx(balanced_error_reference(preds, gts, 'sklearn'))
    from sklearn.metrics import balanced_accuracy_score
    pooled = run(BERMetric(scale=1., average='dataset'), samples)
    assert pooled['BER'] == pytest.approx(1 - balanced_accuracy_score(
        np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds])))


def test_convention_options_and_errors():
    m = BERMetric(convention='autogluon')
    assert (m.source, m.threshold, m.average, m.absent_class) == \
        ('score', 125 / 255, 'image', 'count')
    m = BERMetric(convention='autogluon', source='pred', average='dataset')
    assert (m.source, m.average, m.absent_class) == ('pred', 'dataset', 'count')
    with pytest.raises(ValueError, match='convention'):
        BERMetric(convention='sbu')
    with pytest.raises(ValueError, match='absent_class'):
        BERMetric(absent_class='drop')

"""SODMetric against pysodmetrics called directly on the same maps."""
from types import SimpleNamespace

import numpy as np
import py_sod_metrics
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.structures import SegDataSample

from mmseg_naslora.evaluation.metrics.sod_metric import (
    SODMetric, foreground_probability)


def sample(seg_logits, gt):
    s = SegDataSample()
    s.seg_logits = PixelData(data=torch.as_tensor(seg_logits).float())
    s.gt_sem_seg = PixelData(data=torch.as_tensor(gt)[None].long())
    return s.to_dict()  # what mmengine's Evaluator hands to process()


def run(metric, samples):
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def reference(maps, gts):
    """The field's recipe by hand: min-max, 8-bit PNG, then pysodmetrics."""
    sm, wfm = py_sod_metrics.Smeasure(), py_sod_metrics.WeightedFmeasure()
    em, mae = py_sod_metrics.Emeasure(), py_sod_metrics.MAE()
    for p, g in zip(maps, gts):
        p = (p - p.min()) / (p.max() - p.min() + 1e-8)
        p = np.round(p * 255).astype(np.uint8)
        g = (g == 1).astype(np.uint8) * 255
        for m in (sm, wfm, em, mae):
            m.step(p, g)
    curve = em.get_results()['em']['curve']
    return dict(Smeasure=sm.get_results()['sm'],
                wFmeasure=wfm.get_results()['wfm'],
                meanEmeasure=curve.mean(), maxEmeasure=curve.max(),
                adpEmeasure=em.get_results()['em']['adp'],
                MAE=mae.get_results()['mae'])


def blobs(n=3, size=24, seed=0):
    """GT masks with one square object each, and noisy logits near them."""
    rng = np.random.default_rng(seed)
    gts, logits = [], []
    for i in range(n):
        gt = np.zeros((size, size), np.int64)
        gt[3 + i:14 + i, 5:12 + 2 * i] = 1
        gts.append(gt)
        logits.append(3 * (gt - 0.5) + rng.normal(0, 1.5, (size, size)))
    return gts, logits


ALL = SODMetric.ALL_METRICS


def test_softmax_head_matches_pysodmetrics():
    gts, fg_logits = blobs()
    # Two-channel head: background and foreground logits.
    seg_logits = [np.stack([-l / 2, l / 2]) for l in fg_logits]
    res = run(SODMetric(metrics=ALL),
              [sample(s, g) for s, g in zip(seg_logits, gts)])
    probs = [torch.softmax(torch.tensor(s), 0)[1].numpy() for s in seg_logits]
    ref = reference(probs, gts)
    for k in ALL:
        assert res[k] == pytest.approx(100 * ref[k], abs=1e-9), k
    assert 50 < res['Smeasure'] < 100 and 0 < res['MAE'] < 50


def test_sigmoid_head_as_mmseg_stores_it():
    """'auto' reads the probabilities EncoderDecoder stores for 1 channel."""
    gts, fg_logits = blobs(seed=1)
    logits = torch.tensor(np.stack(fg_logits))[:, None].float()
    fake = SimpleNamespace(align_corners=False,
                           decode_head=SimpleNamespace(threshold=0.5))
    metas = [SegDataSample(metainfo=dict(ori_shape=(24, 24),
                                         img_shape=(24, 24)))
             for _ in gts]
    for m, g in zip(metas, gts):
        m.gt_sem_seg = PixelData(data=torch.tensor(g)[None])
    outs = BaseSegmentor.postprocess_result(fake, logits, metas)
    assert 0 <= outs[0].seg_logits.data.min() <= 1  # stored after sigmoid
    res = run(SODMetric(scale=1.), [o.to_dict() for o in outs])
    ref = reference([torch.sigmoid(l[0]).numpy() for l in logits], gts)
    for k in res:
        assert res[k] == pytest.approx(ref[k], abs=1e-12), k
    # Raw logits need activation='sigmoid'; 'auto' refuses them.
    raw = [sample(l, g) for l, g in zip(logits, gts)]
    assert run(SODMetric(scale=1., activation='sigmoid'), raw) == \
        pytest.approx(res)
    with pytest.raises(ValueError, match='activation="sigmoid"'):
        SODMetric().process({}, raw)


def test_hand_computed_values():
    gt = np.zeros((10, 10), np.int64)
    gt[2:6, 3:8] = 1  # 20 foreground pixels
    perfect = run(SODMetric(metrics=ALL), [sample(gt[None] * 1., gt)])
    assert perfect['Smeasure'] == pytest.approx(100)
    assert perfect['wFmeasure'] == pytest.approx(100)
    assert perfect['MAE'] == pytest.approx(0)
    # The MATLAB E-measure divides by (pixels - 1): 100 px -> 100/99.
    assert perfect['maxEmeasure'] == pytest.approx(100 * 100 / 99)
    # A constant map normalises to 0: MAE is the foreground share. Ignored
    # GT pixels count as background.
    gt_ignore = gt.copy()
    gt_ignore[9, :] = 255
    flat = run(SODMetric(), [sample(np.full((1, 10, 10), .3), gt_ignore)])
    assert flat['MAE'] == pytest.approx(20.)
    assert flat['Smeasure'] < 50


def test_options():
    gts, fg_logits = blobs(n=2, seed=2)
    probs = [1 / (1 + np.exp(-l)) for l in fg_logits]
    samples = [sample(p[None], g) for p, g in zip(probs, gts)]
    q = run(SODMetric(scale=1.), samples)
    f = run(SODMetric(scale=1., quantize=False), samples)
    assert f['MAE'] != q['MAE'] and f['MAE'] == pytest.approx(q['MAE'],
                                                             abs=2e-3)
    raw = run(SODMetric(scale=1., normalize=False, quantize=False), samples)
    direct = py_sod_metrics.MAE()
    for p, g in zip(probs, gts):
        direct.step(p, g == 1, normalize=False)
    assert raw['MAE'] == pytest.approx(direct.get_results()['mae'])
    # Foreground index picks the GT class and the probability channel.
    three = [np.stack([np.zeros_like(l), np.zeros_like(l), l])
             for l in fg_logits]
    gts2 = [g * 2 for g in gts]
    res = run(SODMetric(foreground_index=2, scale=1.),
              [sample(s, g) for s, g in zip(three, gts2)])
    ref = reference([torch.softmax(torch.tensor(s), 0)[2].numpy()
                     for s in three], gts)
    assert res['Smeasure'] == pytest.approx(ref['Smeasure'])


def test_errors():
    with pytest.raises(ValueError, match='Unknown SODMetric metrics'):
        SODMetric(metrics=['Fmeasure'])
    with pytest.raises(ValueError, match='activation'):
        SODMetric(activation='tanh')
    with pytest.raises(ValueError, match='original size'):
        SODMetric().process({}, [sample(np.zeros((1, 4, 4)),
                                        np.zeros((5, 5), np.int64))])
    with pytest.raises(ValueError, match='2 or more channels'):
        foreground_probability(torch.zeros(1, 2, 2), 'softmax')
    with pytest.raises(ValueError, match='foreground_index=3'):
        foreground_probability(torch.zeros(2, 2, 2), 'auto', 3)


def autogluon_reference(probs, gts):
    """AutoGluon's Conv-LoRA recipe, through pysodmetrics.

    ``FM_Pred`` & co. feed ``prob * 255`` as floats and ``label * 255`` to
    the MATLAB-style ``prepare_data`` (``/255``, min-max unless constant),
    and build ``WeightedFmeasure`` with its default ``beta=0.3`` (beta^2).
    """
    sm, wfm = py_sod_metrics.Smeasure(), py_sod_metrics.WeightedFmeasure(beta=0.3)
    em, mae = py_sod_metrics.Emeasure(), py_sod_metrics.MAE()
    for p, g in zip(probs, gts):
        for m in (sm, wfm, em, mae):
            m.step(np.asarray(p, np.float64) * 255, (g == 1) * 255.)
    curve = em.get_results()['em']['curve']
    return dict(Smeasure=sm.get_results()['sm'],
                wFmeasure=wfm.get_results()['wfm'],
                meanEmeasure=curve.mean(), maxEmeasure=curve.max(),
                adpEmeasure=em.get_results()['em']['adp'],
                MAE=mae.get_results()['mae'])


def test_autogluon_convention_matches_pysodmetrics_with_beta2_0_3():
    gts, fg_logits = blobs(n=20, size=32, seed=3)
    # float32, as the seg_logits the metric reads
    probs = [(1 / (1 + np.exp(-l))).astype(np.float32) for l in fg_logits]
    samples = [sample(p[None], g) for p, g in zip(probs, gts)]
    ours = run(SODMetric(metrics=ALL, convention='autogluon'), samples)
    ref = autogluon_reference(probs, gts)
    for k in ALL:
        assert ours[k] == pytest.approx(100 * ref[k], abs=1e-9), k
    # The PraNet recipe (default) on the same maps: beta^2 = 1 and 8-bit maps.
    pranet = run(SODMetric(metrics=ALL), samples)
    assert pranet == pytest.approx(run(SODMetric(metrics=ALL, convention='pranet'), samples))
    ref_pranet = reference(probs, gts)
    for k in ALL:
        assert pranet[k] == pytest.approx(100 * ref_pranet[k], abs=1e-9), k
    # beta^2 = 0.3 weighs precision more: on these noisy maps several points lower.
    assert pranet['wFmeasure'] - ours['wFmeasure'] > 2
    assert ours['Smeasure'] == pytest.approx(pranet['Smeasure'], abs=0.5)


def test_wfm_beta2_option_matches_pysodmetrics_beta():
    gts, fg_logits = blobs(n=4, seed=4)
    probs = [1 / (1 + np.exp(-l)) for l in fg_logits]
    samples = [sample(p[None], g) for p, g in zip(probs, gts)]
    for beta2 in (0.3, 1.0, 2.0):
        ours = run(SODMetric(scale=1., wfm_beta2=beta2, metrics=['wFmeasure']), samples)
        wfm = py_sod_metrics.WeightedFmeasure(beta=beta2)
        for p, g in zip(probs, gts):  # PNG maps: the default quantize=True
            p = (p - p.min()) / (p.max() - p.min() + 1e-8)
            wfm.step(np.round(p * 255).astype(np.uint8), (g == 1).astype(np.uint8) * 255)
        assert ours['wFmeasure'] == pytest.approx(wfm.get_results()['wfm'], abs=1e-12), beta2
    # An explicit option wins over the convention.
    explicit = run(SODMetric(scale=1., convention='autogluon', wfm_beta2=1., quantize=True),
                   samples)
    assert explicit['wFmeasure'] == pytest.approx(
        run(SODMetric(scale=1.), samples)['wFmeasure'], abs=1e-4)


def test_constant_map_per_convention():
    gt = np.zeros((10, 10), np.int64)
    gt[2:6, 3:8] = 1  # 20 % foreground
    flat = [sample(np.full((1, 10, 10), .3), gt)]
    # PraNet's +1e-8 sends a constant map to 0; pysodmetrics keeps it (0.3).
    assert run(SODMetric(scale=1.), flat)['MAE'] == pytest.approx(0.2)
    ours = run(SODMetric(scale=1., convention='autogluon'), flat)
    ref = autogluon_reference([np.full((10, 10), .3)], [gt])
    assert ours['MAE'] == pytest.approx(ref['MAE']) and ref['MAE'] == pytest.approx(
        0.2 * 0.7 + 0.8 * 0.3)
    assert ours['Smeasure'] == pytest.approx(ref['Smeasure'])


def test_convention_errors():
    with pytest.raises(ValueError, match="'pranet', 'autogluon'"):
        SODMetric(convention='matlab')
    with pytest.raises(ValueError, match='wfm_beta2'):
        SODMetric(wfm_beta2=0)

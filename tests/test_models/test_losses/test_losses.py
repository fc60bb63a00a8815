import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FCNHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_naslora.models.losses.balanced_bce_loss import BalancedBCELoss
from mmseg_naslora.models.losses.focal_tversky_loss import FocalTverskyLoss
from mmseg_naslora.models.losses.soft_dice_loss import SoftDiceLoss
from mmseg_naslora.models.losses.structure_loss import StructureLoss

torch.set_num_threads(1)

SAM2LORA_LOSS = [
    dict(type='CrossEntropyLoss', use_sigmoid=True, avg_non_ignore=True, loss_weight=1.0),
    dict(type='SoftDiceLoss', loss_weight=1.0),
    dict(type='FocalTverskyLoss', loss_weight=1.0),
]


def _example(ignore=False):
    """2x1x4x4 logits, 2x4x4 labels; optionally a few ignored pixels."""
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 4, 4) * 2
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:4] = 1
    target[1, 0, :] = 1
    target[1, 3, 3] = 1
    if ignore:
        target[0, 0, 0] = target[0, 3, 1] = target[1, 2, 2] = 255
    return pred, target


def _hand_terms(pred, target):
    """fp64 per-image (p, g, valid) from plain ops; ignored pixels are not valid."""
    p = torch.sigmoid(pred[:, 0].double())
    valid = (target != 255).double()
    g = (target == 1).double()
    return p, g, valid


def _hand_dice(pred, target, per_image=False):
    p, g, v = _hand_terms(pred, target)
    dims = (1, 2) if per_image else (0, 1, 2)
    inter = (v * p * g).sum(dims)
    dice = (2 * inter + 1) / ((v * p).sum(dims) + (v * g).sum(dims) + 1)
    return (1 - dice).mean()


def _hand_ftversky(pred, target, per_image=False, alpha=0.7, beta=0.3, gamma=0.75):
    p, g, v = _hand_terms(pred, target)
    dims = (1, 2) if per_image else (0, 1, 2)
    tp = (v * p * g).sum(dims)
    fn = (v * (1 - p) * g).sum(dims)
    fp = (v * p * (1 - g)).sum(dims)
    ti = (tp + 1) / (tp + alpha * fn + beta * fp + 1)
    return ((1 - ti)**gamma).mean()


def _hand_structure(pred, target, weighted_bce=True):
    """PraNet on a 4x4 image: the 31x31 box (padding 15, zeros counted) covers
    the whole image from every pixel, so avgpool31(g) = Σg / 961 everywhere."""
    p, g, v = _hand_terms(pred, target)
    local_mean = g.sum((1, 2), keepdim=True) / 961.
    w = v * (1 + 5 * (local_mean - g).abs())
    bce = -(g * p.log() + (1 - g) * (1 - p).log())
    if weighted_bce:
        bce_term = (w * bce).sum((1, 2)) / w.sum((1, 2))
    else:
        bce_term = (v * bce).sum() / v.sum()
    inter = (w * p * g).sum((1, 2))
    union = (w * (p + g - p * g)).sum((1, 2))
    return (bce_term + 1 - (inter + 1) / (union + 1)).mean()


CASES = [
    (SoftDiceLoss, {}, _hand_dice),
    (SoftDiceLoss, dict(per_image=True), lambda p, t: _hand_dice(p, t, per_image=True)),
    (FocalTverskyLoss, {}, _hand_ftversky),
    (FocalTverskyLoss, dict(per_image=True), lambda p, t: _hand_ftversky(p, t, per_image=True)),
    (FocalTverskyLoss, dict(alpha=0.4, beta=0.6, gamma=2.),
     lambda p, t: _hand_ftversky(p, t, alpha=0.4, beta=0.6, gamma=2.)),
    (StructureLoss, {}, _hand_structure),
    (StructureLoss, dict(weighted_bce=False),
     lambda p, t: _hand_structure(p, t, weighted_bce=False)),
]


@pytest.mark.parametrize('ignore', [False, True])
@pytest.mark.parametrize('cls, kwargs, hand', CASES)
def test_matches_hand_computation(cls, kwargs, hand, ignore):
    pred, target = _example(ignore)
    loss = cls(**kwargs)(pred, target)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(hand(pred, target).item(), rel=1e-5)
    # (N, H, W) logits and (N, 1, H, W) labels are accepted too
    assert cls(**kwargs)(pred[:, 0], target[:, None]).item() == pytest.approx(loss.item())
    assert cls(loss_weight=2.5, **kwargs)(pred, target).item() == pytest.approx(2.5 * loss.item())


def test_structure_loss_matches_pranet_on_a_larger_image():
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 40, 48)
    mask = torch.zeros(2, 1, 40, 48)
    mask[0, :, 5:25, 10:40] = 1
    mask[1, :, 30:, :12] = 1
    # PraNet's structure_loss with the intended per-pixel BCE
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(pred, mask, reduction='none')
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    prob = torch.sigmoid(pred)
    inter = ((prob * mask) * weit).sum(dim=(2, 3))
    union = ((prob + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    expected = (wbce + wiou).mean()
    loss = StructureLoss()(pred, mask[:, 0].long())
    torch.testing.assert_close(loss, expected)


def test_structure_loss_ignored_region_acts_like_cropping():
    """Ignoring the right part of an image equals training on the left part only."""
    torch.manual_seed(0)
    pred = torch.randn(1, 1, 40, 48)
    target = torch.zeros(1, 40, 48, dtype=torch.long)
    target[0, 5:30, 8:30] = 1
    cropped = StructureLoss()(pred[..., :32], target[..., :32])
    target[..., 32:] = 255
    pred[..., 32:] = 1e4
    torch.testing.assert_close(StructureLoss()(pred, target), cropped)


LOSSES = [
    SoftDiceLoss(),
    SoftDiceLoss(per_image=True),
    FocalTverskyLoss(),
    FocalTverskyLoss(per_image=True),
    StructureLoss(),
    StructureLoss(weighted_bce=False),
    BalancedBCELoss(),
]


@pytest.mark.parametrize('loss_fn', LOSSES, ids=lambda m: type(m).__name__)
def test_ignored_pixels_change_nothing(loss_fn):
    pred, target = _example(ignore=True)
    ignored = target == 255
    wild = pred.clone()
    wild[:, 0][ignored] = torch.tensor([1e4, float('inf'), float('nan')])
    pred.requires_grad_(True)
    wild.requires_grad_(True)
    base = loss_fn(pred, target)
    other = loss_fn(wild, target)
    assert torch.isfinite(other)
    torch.testing.assert_close(other, base)
    base.backward()
    other.backward()
    torch.testing.assert_close(wild.grad, pred.grad)
    assert (pred.grad[:, 0][ignored] == 0).all()
    # a different label under an ignored pixel changes nothing either
    relabel = target.clone()
    relabel[ignored] = 255
    assert loss_fn(pred, relabel).item() == pytest.approx(base.item())


@pytest.mark.parametrize('loss_fn', LOSSES, ids=lambda m: type(m).__name__)
def test_gradients_flow_and_all_ignored_is_safe(loss_fn):
    pred, target = _example()
    pred.requires_grad_(True)
    loss_fn(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad != 0).all()
    # the loss decreases along its gradient
    with torch.no_grad():
        assert loss_fn(pred - 0.1 * pred.grad / pred.grad.norm(), target) < loss_fn(pred, target)

    pred.grad = None
    loss = loss_fn(pred, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == pytest.approx(0., abs=1e-6)
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_pixel_weight_and_ignore_index_none():
    pred, target = _example()
    weight = torch.ones(2, 4, 4)
    weight[0, :2] = 0
    masked = target.clone()
    masked[0, :2] = 255
    for loss_fn in LOSSES:
        if isinstance(loss_fn, StructureLoss):
            # a zero weight drops the pixel's terms but, unlike ignore, keeps
            # its label inside the box filter of its neighbours
            leaf = pred.clone().requires_grad_(True)
            loss_fn(leaf, target, weight=weight).backward()
            assert (leaf.grad[0, 0, :2] == 0).all() and (leaf.grad[0, 0, 2:] != 0).all()
            assert loss_fn(pred, target, weight=torch.ones(2, 1, 4, 4)).item() == \
                pytest.approx(loss_fn(pred, target).item())
        else:
            assert loss_fn(pred, target,
                           weight=weight).item() == pytest.approx(loss_fn(pred, masked).item(),
                                                                  rel=1e-6)
        # with ignore_index=None, 255 is a label again, and not a binary one
        with pytest.raises(ValueError, match='labels 0/1'):
            loss_fn(pred, masked, ignore_index=None)


@pytest.mark.parametrize('loss_fn', LOSSES, ids=lambda m: type(m).__name__)
def test_bad_inputs_are_named(loss_fn):
    pred, target = _example()
    with pytest.raises(ValueError, match='out_channels=1'):
        loss_fn(torch.randn(2, 2, 4, 4), target)
    with pytest.raises(ValueError, match='same'):
        loss_fn(pred, target[:, :3])
    with pytest.raises(ValueError, match='labels 0/1'):
        loss_fn(pred, target * 2)


def test_bf16_logits_are_handled_in_fp32():
    pred, target = _example(ignore=True)
    for loss_fn in LOSSES:
        half = loss_fn(pred.bfloat16(), target)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(loss_fn(pred.bfloat16().float(), target).item())


def test_registry_and_names():
    names = {
        'SoftDiceLoss': 'loss_sdice',
        'FocalTverskyLoss': 'loss_ftversky',
        'StructureLoss': 'loss_structure',
        'BalancedBCELoss': 'loss_bbce',
    }
    for type_, name in names.items():
        assert MODELS.build(dict(type=type_)).loss_name == name
    assert MODELS.build(dict(type='StructureLoss', loss_name='loss_s')).loss_name == 'loss_s'
    with pytest.raises(ValueError, match='gamma'):
        FocalTverskyLoss(gamma=0)
    with pytest.raises(ValueError, match='kernel_size'):
        StructureLoss(kernel_size=30)


def _head(loss_decode):
    torch.manual_seed(0)
    return FCNHead(in_channels=8,
                   channels=8,
                   num_convs=1,
                   num_classes=2,
                   out_channels=1,
                   threshold=0.5,
                   loss_decode=loss_decode)


def _samples(target):
    return [SegDataSample(gt_sem_seg=PixelData(data=t[None])) for t in target]


def test_sam2lora_composite_through_a_stock_decode_head():
    head = _head(SAM2LORA_LOSS)
    feats = torch.randn(2, 8, 4, 4)
    _, target = _example(ignore=True)
    target = F.interpolate(target[:, None].float(), scale_factor=2, mode='nearest')[:, 0].long()
    seg_logits = head.forward([feats])
    assert seg_logits.shape == (2, 1, 4, 4)
    losses = head.loss_by_feat(seg_logits, _samples(target))
    assert {'loss_ce', 'loss_sdice', 'loss_ftversky', 'acc_seg'} <= set(losses)

    logits = F.interpolate(seg_logits, size=(8, 8), mode='bilinear', align_corners=False)
    p, g, v = _hand_terms(logits.detach(), target)
    bce = -(g * p.log() + (1 - g) * (1 - p).log())
    # avg_non_ignore=True: the mean over non-ignored pixels only
    assert losses['loss_ce'].item() == pytest.approx(((v * bce).sum() / v.sum()).item(), rel=1e-5)
    assert losses['loss_sdice'].item() == pytest.approx(_hand_dice(logits.detach(), target).item(),
                                                        rel=1e-5)
    assert losses['loss_ftversky'].item() == pytest.approx(_hand_ftversky(logits.detach(),
                                                                          target).item(),
                                                           rel=1e-5)

    total = sum(v for k, v in losses.items() if k.startswith('loss_'))
    total.backward()
    assert head.conv_seg.weight.grad.abs().sum() > 0


def test_stock_bce_without_avg_non_ignore_counts_ignored_pixels():
    """Why SAM2LORA_LOSS sets avg_non_ignore=True on the stock CE."""
    pred, target = _example(ignore=True)
    valid = (target != 255).sum().item()
    kwargs = dict(type='CrossEntropyLoss', use_sigmoid=True)
    plain = MODELS.build(kwargs)(pred, target, ignore_index=255)
    right = MODELS.build(dict(kwargs, avg_non_ignore=True))(pred, target, ignore_index=255)
    assert plain.item() == pytest.approx(right.item() * valid / target.numel(), rel=1e-5)


def test_structure_loss_through_a_stock_decode_head():
    head = _head(dict(type='StructureLoss'))
    _, target = _example(ignore=True)
    seg_logits = head.forward([torch.randn(2, 8, 4, 4)])
    losses = head.loss_by_feat(seg_logits, _samples(target))
    assert losses['loss_structure'].item() == pytest.approx(_hand_structure(
        seg_logits.detach(), target).item(),
                                                            rel=1e-5)


# ------------------------------------------------------------------ balanced BCE


def _autogluon_bbce(input, target):
    """AutoGluon's BBCEWithLogitLoss (optim/losses/bce_loss.py), verbatim in substance."""
    eps = 1e-10
    count_pos = torch.sum(target) + eps
    count_neg = torch.sum(1.0 - target)
    ratio = count_neg / count_pos
    w_neg = count_pos / (count_pos + count_neg)
    return w_neg * torch.nn.BCEWithLogitsLoss(pos_weight=ratio)(input, target)


def test_balanced_bce_worked_example():
    """One positive of four pixels: positives weigh 3/4, negatives 1/4, over 4 pixels.

    logits (0 | 0, ln 3, -ln 3), labels (1 | 0, 0, 0): -log σ(0) = ln 2,
    -log(1 - σ(0)) = ln 2, -log(1 - σ(ln 3)) = ln 4, -log(1 - σ(-ln 3)) = ln 4/3, so
    loss = (3·ln 2 + ln 2 + ln 4 + ln 4/3) / 16 = (8 ln 2 - ln 3) / 16.
    """
    pred = torch.tensor([[[[0., 0.], [math.log(3), -math.log(3)]]]])
    target = torch.tensor([[[1, 0], [0, 0]]])
    loss = BalancedBCELoss()(pred, target)
    assert loss.item() == pytest.approx((8 * math.log(2) - math.log(3)) / 16, rel=1e-6)
    assert loss.item() == pytest.approx(_autogluon_bbce(pred, target[:, None].float()).item(),
                                        rel=1e-6)


def test_balanced_bce_equals_autogluon_on_a_batch_and_ignores_like_cropping():
    torch.manual_seed(0)
    pred = 2 * torch.randn(3, 1, 12, 10)
    # images with 50 %, 20 % and 5 % positives
    target = (torch.rand(3, 12, 10) < torch.tensor([.5, .2, .05])[:, None, None]).long()
    ref = _autogluon_bbce(pred, target[:, None].float())
    assert BalancedBCELoss()(pred, target).item() == pytest.approx(ref.item(), rel=1e-6)
    # counts are batch-wide: not the mean of per-image losses
    per_image = sum(_autogluon_bbce(pred[i:i + 1], target[i:i + 1, None].float())
                    for i in range(3)) / 3
    assert abs(per_image.item() - ref.item()) > 0.01
    # ignoring pixels equals dropping them (the reference sees only the rest)
    ignored = target.clone()
    ignored[:, :4] = 255
    keep = ignored != 255
    ref = _autogluon_bbce(pred[:, 0][keep], target[keep].float())
    assert BalancedBCELoss()(pred, ignored).item() == pytest.approx(ref.item(), rel=1e-6)
    # a batch without positives gives (almost) no loss, as in the reference
    assert BalancedBCELoss()(pred, torch.zeros_like(target)).item() < 1e-8

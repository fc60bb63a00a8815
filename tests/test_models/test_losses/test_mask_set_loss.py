"""MaskSetLoss against Mask2Former's formulas computed by hand (fp64, brute-force matching)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from mmseg_naslora.models.losses import MaskSetLoss
from mmseg_naslora.models.losses.mask_set_loss import (SET_LOSS_PRESETS, downsample_labels,
                                                       point_sample, uncertain_point_coords)

torch.set_num_threads(1)
K = 3  # classes; index 3 is "no object"


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _pair_terms(logits, seg, cls):
    """Mask2Former's per-pair BCE (mean over valid pixels) and Dice, by plain loops."""
    bce, ps, ys, py = 0., 0., 0., 0.
    n = 0
    for x, lab in zip(logits.flatten().tolist(), seg.flatten().tolist()):
        if lab == 255:
            continue
        y, p = float(lab == cls), _sig(x)
        bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
        ps, ys, py, n = ps + p, ys + y, py + p * y, n + 1
    return bce / n, 1 - (2 * py + 1) / (ps + ys + 1)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def hand_set_loss(cls_logits, mask_logits, seg, loss_w=(2., 5., 5.), match_w=None,
                  no_object=0.1):
    """Mask2Former's set loss on the mask grid; the assignment by enumerating all of them.

    Returns ``(losses, assignment)`` with ``assignment[i] = {query: class}``.
    """
    match_w = match_w or loss_w
    b, n, _ = cls_logits.shape
    targets = [[K] * n for _ in range(b)]
    bces, dices, assignment = [], [], []
    for i in range(b):
        classes = sorted(set(seg[i].flatten().tolist()) - {255})
        terms = {(q, c): _pair_terms(mask_logits[i, q], seg[i], c)
                 for q in range(n) for c in classes}
        probs = [_softmax(cls_logits[i, q].tolist()) for q in range(n)]

        def cost(q, c):
            bce, dice = terms[q, c]
            return -match_w[0] * probs[q][c] + match_w[1] * bce + match_w[2] * dice

        best = min(itertools.permutations(range(n), len(classes)),
                   key=lambda qs: sum(cost(q, c) for q, c in zip(qs, classes)))
        assignment.append(dict(zip(best, classes)))
        for q, c in zip(best, classes):
            targets[i][q] = c
            bces.append(terms[q, c][0])
            dices.append(terms[q, c][1])
    # weighted CE: Σ w_t·(-log p_t) / Σ w_t over every query of the batch
    num = den = 0.
    for i in range(b):
        for q in range(n):
            t = targets[i][q]
            w = no_object if t == K else 1.
            num += -w * math.log(_softmax(cls_logits[i, q].tolist())[t])
            den += w
    n_masks = len(bces)
    losses = dict(loss_cls=loss_w[0] * num / den, loss_mask=loss_w[1] * sum(bces) / n_masks,
                  loss_dice=loss_w[2] * sum(dices) / n_masks)
    return losses, assignment


def planted_batch():
    """Two 4x4 images whose class-only assignment differs from the full-cost one.

    Image 0: class 0 on the left half, class 1 on the right. Query 0 is sure it
    is class 0 but its mask covers the right half; query 1 says class 1 and
    covers the left half; query 2 says no object. Class costs alone match
    q0->0, q1->1; with the mask costs q0->1, q1->0 is far cheaper.
    Image 1: class 2 on the top rows, class 0 below, column 3 ignored (12 valid
    pixels against 16, so a pooled BCE mean differs from the per-mask one).
    """
    g = torch.Generator().manual_seed(0)
    seg = torch.zeros(2, 4, 4, dtype=torch.long)
    seg[0, :, 2:] = 1
    seg[1, :2] = 2
    seg[1, :, 3] = 255
    cls = torch.randn(2, 3, K + 1, generator=g)
    masks = torch.randn(2, 3, 4, 4, generator=g)
    cls[0] = torch.tensor([[3., 0, 0, 0], [0, 3., 0, 0], [0, 0, 0, 3.]])
    masks[0, 0] = torch.tensor([-4., -4, 4, 4]).expand(4, 4)
    masks[0, 1] = torch.tensor([4., 4, -4, -4]).expand(4, 4)
    masks[0, 2] = 0.3 * masks[0, 2]
    return cls, masks, seg


def _check(got, want, rel=1e-5):
    for k in ('loss_cls', 'loss_mask', 'loss_dice'):
        assert got[k].item() == pytest.approx(want[k], rel=rel), k


def test_planted_example_matches_the_hand_computation():
    cls, masks, seg = planted_batch()
    want, assignment = hand_set_loss(cls.double(), masks.double(), seg)
    assert assignment[0] == {0: 1, 1: 0}  # the mask costs overrule the class scores
    _check(MaskSetLoss(num_classes=K)(cls, masks, seg), want)

    loss = MaskSetLoss(num_classes=K)
    classes, tgt = loss.targets(seg[0])
    q, t = loss.match(cls[0], masks[0], classes, tgt, torch.ones(16, dtype=torch.bool))
    assert dict(zip(q.tolist(), classes[t].tolist())) == assignment[0]


def test_class_only_matching_gives_other_losses():
    """Why the test above catches matching on class costs alone."""
    cls, masks, seg = planted_batch()
    full, _ = hand_set_loss(cls.double(), masks.double(), seg)
    class_only, assignment = hand_set_loss(cls.double(), masks.double(), seg,
                                           match_w=(2., 0., 0.))
    assert assignment[0] == {0: 0, 1: 1}
    assert class_only['loss_mask'] > 5 * full['loss_mask']
    # and the loss follows its match weights
    got = MaskSetLoss(num_classes=K, match_mask_weight=1e-9, match_dice_weight=1e-9)(
        cls, masks, seg)
    _check(got, class_only)


def test_bce_is_the_mean_over_each_masks_pixels_then_over_masks():
    """A pooled mean (Σ bce / Σ pixels) or a per-mask sum give other numbers here."""
    cls, masks, seg = planted_batch()
    want, assignment = hand_set_loss(cls.double(), masks.double(), seg)
    pairs = [(i, q, c) for i, a in enumerate(assignment) for q, c in a.items()]
    sums, counts = [], []
    for i, q, c in pairs:
        bce, _ = _pair_terms(masks[i, q].double(), seg[i], c)
        n = int((seg[i] != 255).sum())
        sums.append(bce * n)
        counts.append(n)
    pooled = 5 * sum(sums) / sum(counts)
    per_mask_sum = 5 * sum(sums) / len(pairs)
    assert abs(pooled - want['loss_mask']) > 0.02 * want['loss_mask']
    assert abs(per_mask_sum - want['loss_mask']) > 0.5 * want['loss_mask']
    got = MaskSetLoss(num_classes=K)(cls, masks, seg)['loss_mask'].item()
    assert got == pytest.approx(want['loss_mask'], rel=1e-5)


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_random_batches_match_the_hand_computation(seed):
    g = torch.Generator().manual_seed(seed)
    cls = 2 * torch.randn(3, 4, K + 1, generator=g)
    masks = 3 * torch.randn(3, 4, 5, 6, generator=g)
    seg = torch.randint(0, K, (3, 5, 6), generator=g)
    seg[0, :2] = 255
    seg[2] = torch.where(seg[2] == 1, 0, seg[2])  # one image with fewer classes
    weights = dict(loss_w=(1.5, 4., 3.), match_w=(0.5, 2., 7.), no_object=0.3)
    want, _ = hand_set_loss(cls.double(), masks.double(), seg, **weights)
    loss = MaskSetLoss(num_classes=K, loss_cls_weight=1.5, loss_mask_weight=4.,
                       loss_dice_weight=3., match_cls_weight=0.5, match_mask_weight=2.,
                       match_dice_weight=7., no_object_weight=0.3)
    _check(loss(cls, masks, seg), want)


def test_presets_give_their_weights():
    ag = MODELS.build(dict(type='MaskSetLoss', num_classes=K, preset='autogluon'))
    assert ag.match_weights == dict(cls=1., mask=5., dice=5.)
    assert ag.weights == dict(cls=1., mask=1., dice=1.)
    assert (ag.num_points, ag.oversample_ratio, ag.importance_sample_ratio) == (12544, 3., .75)
    m2f = MaskSetLoss(num_classes=K, preset='mask2former')
    assert m2f.match_weights == m2f.weights == dict(cls=2., mask=5., dice=5.)
    assert m2f.num_points == 12544
    # no preset: today's full grid with 2/5/5 for both
    plain = MaskSetLoss(num_classes=K)
    assert plain.num_points is None and plain.match_weights == plain.weights == m2f.weights
    # explicit arguments override a preset; num_points=0 is the full grid
    mixed = MaskSetLoss(num_classes=K, preset='autogluon', loss_dice_weight=2., num_points=0)
    assert mixed.weights == dict(cls=1., mask=1., dice=2.) and mixed.num_points is None
    assert set(SET_LOSS_PRESETS) == {'autogluon', 'mask2former'}
    with pytest.raises(ValueError, match='preset'):
        MaskSetLoss(num_classes=K, preset='detr')

    # the AutoGluon weights in values, on the grid
    cls, masks, seg = planted_batch()
    want, _ = hand_set_loss(cls.double(), masks.double(), seg, loss_w=(1., 1., 1.),
                            match_w=(1., 5., 5.))
    _check(MaskSetLoss(num_classes=K, preset='autogluon', num_points=0)(cls, masks, seg), want)


# ----------------------------------------------------------------------------- points


def _hand_bilinear(img, x, y):
    """Bilinear value of a (H, W) map at normalised (x, y), align_corners=False, zero pad."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = 0.
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * img[yi, xi].item()
    return out


def test_point_sample_reads_planted_coordinates():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 5, 7, generator=g)
    # pixel centres give the pixels themselves
    ij = [(0, 0), (4, 6), (2, 3), (1, 5)]
    centres = torch.tensor([[(j + .5) / 7, (i + .5) / 5] for i, j in ij]).expand(2, -1, -1)
    got = point_sample(img, centres)
    assert got.shape == (2, 3, 4)
    want = torch.stack([img[:, :, i, j] for i, j in ij], -1)
    torch.testing.assert_close(got, want)
    # arbitrary points, the border half pixel included, against the hand formula
    coords = torch.rand(2, 20, 2, generator=g)
    coords[0, 0] = torch.tensor([0.01, 0.99])
    got = point_sample(img, coords)
    for r in range(2):
        for c in range(3):
            for p in range(20):
                x, y = coords[r, p].tolist()
                assert got[r, c, p].item() == pytest.approx(_hand_bilinear(img[r, c], x, y),
                                                            abs=1e-5)
    # torch's own grid_sample on the [-1, 1] grid
    torch.testing.assert_close(
        got, F.grid_sample(img, (2 * coords - 1)[:, :, None], align_corners=False)[..., 0])


def test_uncertain_points_are_the_most_uncertain_candidates():
    """Left 10 of 16 columns on the decision boundary (logit 0), column 0 ignored."""
    torch.manual_seed(0)
    logits = torch.full((2, 1, 8, 16), 10.)
    logits[..., :10] = 0
    invalid = torch.zeros(2, 1, 8, 16)
    invalid[..., 0] = 1
    coords = uncertain_point_coords(logits, lambda x: -x.abs(), 4000, 3., .75, invalid)
    assert coords.shape == (2, 4000, 2)
    assert ((coords >= 0) & (coords <= 1)).all()
    x = coords[..., 0]
    chosen, rest = x[:, :3000], x[:, 3000:]
    # exactly uncertain (x < 9.5/16) and never touching column 0 (x >= 1.5/16)
    assert (chosen < 9.5 / 16).all() and (chosen >= 1.5 / 16).all()
    # the rest is uniform over the image
    assert 0.4 < (rest > 0.5).float().mean() < 0.6
    assert uncertain_point_coords(logits, lambda x: -x.abs(), 10, 3., .75).shape == (2, 10, 2)
    assert uncertain_point_coords(logits, lambda x: -x.abs(), 10, 1., 0.).shape == (2, 10, 2)


def _halves(size=32, label_scale=1):
    """Image 0: classes 0|1 left/right; image 1: classes 2/0 top/bottom; sure masks."""
    s = size * label_scale
    seg = torch.zeros(2, s, s, dtype=torch.long)
    seg[0, :, s // 2:] = 1
    seg[1, :s // 2] = 2
    cls = torch.full((2, 3, K + 1), 0.)
    masks = torch.full((2, 3, size, size), -3.)
    masks[0, 0, :, size // 2:] = 3  # q0: class 1's region
    masks[0, 1, :, :size // 2] = 3  # q1: class 0's region
    masks[1, 2, :size // 2] = 3  # q2: class 2's region
    masks[1, 0, size // 2:] = 3  # q0: class 0's region
    return cls, masks, seg


def _dense_point_losses(masks, seg, assignment, n=256):
    """The point estimator's expectation: BCE/Dice at n x n regular points per matched mask.

    Logits and labels are read with torch's grid_sample (bilinear,
    align_corners=False, zero padding), as Mask2Former's point_sample does.
    """
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    grid = torch.stack(torch.meshgrid(t, t, indexing='xy'), -1)[None] * 2 - 1
    bces, dices = [], []
    for i, a in enumerate(assignment):
        for q, c in a.items():
            x = F.grid_sample(masks[i, q][None, None].double(), grid, align_corners=False)
            y = F.grid_sample((seg[i] == c)[None, None].double(), grid, align_corners=False)
            bces.append(F.binary_cross_entropy_with_logits(x, y).item())
            p = x.sigmoid()
            dices.append(1 - (2 * (p * y).sum() + 1).item() / ((p + y).sum() + 1).item())
    return 5 * sum(bces) / len(bces), 5 * sum(dices) / len(dices)


@pytest.mark.parametrize('label_scale', [1, 4])
def test_point_mode_estimates_the_point_integral(label_scale):
    """Uniform points estimate the mean over the image; labels at 4x are read at the same place.

    (Boundary blending and the zero padding of the outer half pixel put the
    point loss some 30 % above the grid loss here, as in Mask2Former.)
    """
    cls, masks, seg = _halves(label_scale=label_scale)
    grid, assignment = hand_set_loss(cls.double(), masks.double(), _halves()[2])
    assert assignment == [{0: 1, 1: 0}, {2: 2, 0: 0}]
    bce, dice = _dense_point_losses(masks, seg, assignment)
    torch.manual_seed(0)
    pts = MaskSetLoss(num_classes=K, num_points=20000, importance_sample_ratio=0.)(
        cls, masks, seg)
    assert pts['loss_cls'].item() == pytest.approx(grid['loss_cls'], rel=1e-5)
    assert pts['loss_mask'].item() == pytest.approx(bce, rel=0.03)
    assert pts['loss_dice'].item() == pytest.approx(dice, rel=0.03)
    # a wrong match (or misread labels) would be far off
    swapped = masks[:, [1, 0, 2]]
    bad = MaskSetLoss(num_classes=K, num_points=20000, match_mask_weight=1e-9,
                      match_dice_weight=1e-9)(cls, swapped, seg)
    assert bad['loss_mask'] > 3 * pts['loss_mask']
    # importance sampling concentrates on the boundaries, where the loss is high
    torch.manual_seed(0)
    hard = MaskSetLoss(num_classes=K, num_points=20000)(cls, masks, seg)
    assert hard['loss_mask'] > 1.3 * pts['loss_mask']


def test_point_mode_ignored_pixels_change_nothing_and_gradients_flow():
    torch.manual_seed(0)
    cls = torch.randn(2, 4, K + 1)
    masks = torch.randn(2, 4, 8, 8)
    seg = torch.randint(0, K, (2, 8, 8))
    seg[:, :, :3] = 255
    wild = masks.clone()
    wild[..., :3] = 1e4 * torch.randn(2, 4, 8, 3)
    loss = MaskSetLoss(num_classes=K, num_points=300)
    torch.manual_seed(1)
    ref = loss(cls, masks, seg)
    torch.manual_seed(1)
    out = loss(cls, wild.requires_grad_(True), seg)
    for k in ref:
        assert torch.allclose(ref[k], out[k]), k
    sum(out.values()).backward()
    assert (wild.grad[..., :2] == 0).all() and wild.grad[..., 4:].abs().sum() > 0


# ------------------------------------------------------------------- label positions


def test_labels_are_taken_at_the_block_centres():
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 5, (2, 16, 24), generator=g)
    torch.testing.assert_close(downsample_labels(seg, (4, 6)), seg[:, 2::4, 2::4])
    assert downsample_labels(seg, (16, 24)) is seg


def test_a_centred_thin_structure_survives():
    """A 2-pixel line on the centre columns of 4x4 blocks (4j+1, 4j+2).

    Bilinear upsampling of the 1/4 logits puts the centre of coarse pixel j at
    input x = 4j + 1.5, on this line; top-left (``nearest``) sampling reads
    column 4j and loses the class altogether.
    """
    seg = torch.zeros(1, 16, 16, dtype=torch.long)
    seg[0, :, 5:7] = 1
    top_left = F.interpolate(seg[:, None].float(), size=(4, 4), mode='nearest')[:, 0].long()
    assert (top_left == 1).sum() == 0
    coarse = downsample_labels(seg, (4, 4))
    assert coarse[0, :, 1].eq(1).all() and (coarse == 1).sum() == 4

    g = torch.Generator().manual_seed(0)
    cls = torch.randn(1, 3, K + 1, generator=g)
    masks = torch.randn(1, 3, 4, 4, generator=g)
    want, assignment = hand_set_loss(cls.double(), masks.double(), seg[:, 2::4, 2::4])
    assert 1 in assignment[0].values()
    _check(MaskSetLoss(num_classes=K)(cls, masks, seg), want)

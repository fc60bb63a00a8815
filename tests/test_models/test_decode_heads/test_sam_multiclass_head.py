import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DECODER
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmseg_naslora.models.decode_heads import SAMMaskDecoderHead, SAMMaskSetHead
from mmseg_naslora.models.losses import MaskSetLoss

CE = dict(type='CrossEntropyLoss', use_sigmoid=False)


def head(num_classes=3, **kwargs):
    return SAMMaskDecoderHead(num_classes=num_classes, loss_decode=CE, **TINY_DECODER, **kwargs)


def samples(masks):
    out = []
    for m in masks:
        s = SegDataSample(gt_sem_seg=PixelData(data=m[None]))
        s.set_metainfo(dict(img_shape=m.shape, pad_shape=m.shape, ori_shape=m.shape))
        out.append(s)
    return out


def test_set_mode_shapes_and_defaults():
    h = head(num_classes=4)
    assert h.mode == 'set' and h.out_channels == 4
    assert h.class_tokens.num_embeddings == 8  # max(K, min(2K, 100))
    cls, masks = h([torch.randn(2, 32, 4, 5)])
    assert cls.shape == (2, 8, 5) and masks.shape == (2, 8, 16, 20)
    scores = h.predict_by_feat((cls, masks), [dict(img_shape=(64, 80))])
    assert scores.shape == (2, 4, 64, 80)


def test_per_class_mode_shapes():
    h = head(num_classes=3, mode='per_class')
    out = h([torch.randn(2, 32, 4, 4)])
    assert out.shape == (2, 3, 64, 64)
    assert len(h.class_hypernetworks) == 3


@pytest.mark.parametrize('mode', ['set', 'per_class'])
def test_class_tokens_start_from_sams_first_mask_token(official_sam, mode):
    sam, path = official_sam
    h = head(mode=mode, checkpoint=path)
    h.init_weights()
    first = sam.mask_decoder.mask_tokens.weight[0]
    tokens = h.class_tokens.weight
    if mode == 'per_class':
        assert all(torch.equal(t, first) for t in tokens)
    else:  # symmetry-breaking noise of token_noise times the token's standard deviation
        assert h.token_noise == 30.
        scale = h.token_noise * first.std() * first.numel()**0.5
        assert 0.6 * scale < (tokens - first).norm(dim=1).mean() < 1.4 * scale
        assert not torch.equal(tokens[0], tokens[1])
    assert not h.mask_decoder.mask_tokens.weight.requires_grad
    if mode == 'per_class':
        ref = sam.mask_decoder.output_hypernetworks_mlps[0].state_dict()
        got = h.class_hypernetworks[2].state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_matching_recovers_the_known_assignment():
    loss = MaskSetLoss(num_classes=3)
    seg = torch.tensor([[0, 0, 2, 2]] * 4)
    classes, masks = loss.targets(seg)
    assert classes.tolist() == [0, 2]
    # Query 2 looks like class 0's mask, query 0 like class 2's; query 1 is junk.
    mask_logits = torch.full((3, 4, 4), -8.)
    mask_logits[2, :, :2] = 8
    mask_logits[0, :, 2:] = 8
    cls_logits = torch.zeros(3, 4)
    cls_logits[2, 0] = 5
    cls_logits[0, 2] = 5
    q, t = loss.match(cls_logits, mask_logits, classes, masks, torch.ones(16, dtype=torch.bool))
    assert dict(zip(q.tolist(), classes[t].tolist())) == {2: 0, 0: 2}


def test_semantic_inference_on_hand_set_logits():
    cls = torch.full((1, 2, 3), -10.)
    cls[0, 0, 1] = 10  # query 0 says class 1
    cls[0, 1, 2] = 10  # query 1 says no object
    masks = torch.full((1, 2, 2, 2), -10.)
    masks[0, 0, 0, :] = 10  # query 0 covers the top row
    masks[0, 1] = 10  # the no-object query covers everything and must not count
    scores = SAMMaskSetHead.semantic_scores(cls, masks)
    assert scores.shape == (1, 2, 2, 2)
    assert torch.allclose(scores[0, 1, 0], torch.ones(2), atol=1e-3)
    assert scores[0, :, 1].max() < 1e-3
    assert scores[0, 0].max() < 1e-3


def test_ignored_pixels_change_nothing():
    torch.manual_seed(0)
    loss = MaskSetLoss(num_classes=3)
    cls = torch.randn(2, 4, 4)
    masks = torch.randn(2, 4, 8, 8)
    seg = torch.randint(0, 3, (2, 8, 8))
    seg[:, :, :3] = 255
    ref = loss(cls, masks, seg)
    wild = masks.clone()
    wild[:, :, :, :3] = 1e4 * torch.randn(2, 4, 8, 3)
    out = loss(cls, wild, seg)
    for k in ref:
        assert torch.allclose(ref[k], out[k]), k


def test_label_outside_classes_is_refused():
    with pytest.raises(ValueError, match=r'outside \[0, 3\)'):
        MaskSetLoss(num_classes=3)(torch.randn(1, 4, 4), torch.randn(1, 4, 4, 4),
                                   torch.full((1, 4, 4), 7))


def test_set_loss_goes_down_when_overfitting_one_batch():
    torch.manual_seed(0)
    h = head(num_classes=3)
    feats = [torch.randn(2, 32, 4, 4)]
    seg = torch.zeros(2, 64, 64, dtype=torch.long)
    seg[0, :32] = 1
    seg[1, :, 32:] = 2
    seg[1, :8] = 255
    opt = torch.optim.Adam([p for p in h.parameters() if p.requires_grad], lr=5e-3)
    totals = []
    for _ in range(40):
        losses = h.loss(feats, samples(seg), train_cfg={})
        assert {'loss_cls', 'loss_mask', 'loss_dice', 'acc_seg'} <= set(losses)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.5 * totals[0]
    assert losses['acc_seg'] > 75


@pytest.mark.parametrize('mode', ['binary', 'set', 'per_class'])
def test_every_trainable_parameter_gets_a_gradient(mode):
    """Unused SAM parts are frozen, so DDP runs without find_unused_parameters."""
    torch.manual_seed(0)
    if mode == 'binary':
        h = SAMMaskDecoderHead(num_classes=2, out_channels=1, threshold=0.5, **TINY_DECODER,
                               loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True))
    else:
        h = head(num_classes=3, mode=mode)
    labels = torch.randint(0, 2 if mode == 'binary' else 3, (2, 64, 64))
    losses = h.loss_by_feat(h([torch.randn(2, 32, 4, 4)]), samples(labels))
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    missing = [n for n, p in h.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    frozen = {n.split('.')[2] for n, p in h.named_parameters()
              if n.startswith('mask_decoder.output_hypernetworks_mlps') and not p.requires_grad}
    assert frozen == {'binary': set(), 'set': {'1', '2', '3'},
                      'per_class': {'0', '1', '2', '3'}}[mode]


def test_set_queries_stay_apart_through_the_decoder(official_sam):
    """At init the queries' class logits differ by a few % of their spread over classes.

    SAM's first decoder layer averages near-identical queries into one (no
    residual); the old 0.1 noise left the queries within 0.2 % of each other.
    """
    _, path = official_sam
    spreads = {}
    for noise in (0.1, 1.0):
        torch.manual_seed(0)
        h = head(num_classes=11, checkpoint=path, token_noise=noise)
        h.init_weights()
        cls, _ = h([torch.randn(2, 32, 4, 4)])
        spreads[noise] = (cls.std(1).mean() / cls.std(2).mean()).item()
    assert spreads[0.1] < 0.005 and spreads[1.0] > 0.02


def test_set_head_is_its_own_class_and_the_old_spelling_builds_it():
    from mmseg.registry import MODELS
    cfg = dict(num_classes=3, loss_decode=CE, **TINY_DECODER)
    torch.manual_seed(0)
    old = MODELS.build(dict(cfg, type='SAMMaskDecoderHead', mode='set'))
    torch.manual_seed(0)
    new = MODELS.build(dict(cfg, type='SAMMaskSetHead'))
    assert type(old) is type(new) is SAMMaskSetHead
    assert type(head(num_classes=3)) is SAMMaskSetHead  # the multi-class default
    assert type(head(num_classes=3, mode='per_class')) is SAMMaskDecoderHead
    binary = SAMMaskDecoderHead(num_classes=2, out_channels=1, threshold=0.5, loss_decode=CE,
                                **TINY_DECODER)
    assert type(binary) is SAMMaskDecoderHead and binary.mode == 'binary'
    # same parameters, same outputs
    sd_old, sd_new = old.state_dict(), new.state_dict()
    assert sd_old.keys() == sd_new.keys()
    assert all(torch.equal(sd_old[k], sd_new[k]) for k in sd_old)
    feats = [torch.randn(1, 32, 4, 4)]
    for a, b in zip(old(feats), new(feats)):
        torch.testing.assert_close(a, b)
    # copies keep their class; per-pixel code paths are gone from the set head
    import copy
    assert type(copy.deepcopy(new)) is SAMMaskSetHead
    assert not hasattr(new, 'class_hypernetworks') and not hasattr(
        head(num_classes=3, mode='per_class'), 'class_embed')
    with pytest.raises(ValueError, match='per_class'):
        SAMMaskSetHead(mode='per_class', **cfg)


def test_point_sampled_set_loss_trains_through_the_head():
    """The AutoGluon preset (points, 1/5/5 matching, 1:1:1) plugs into the set head."""
    torch.manual_seed(0)
    h = head(num_classes=3, set_loss=dict(type='MaskSetLoss', preset='autogluon',
                                          num_points=256))
    assert h.set_loss.weights == dict(cls=1., mask=1., dice=1.)
    seg = torch.zeros(2, 64, 64, dtype=torch.long)
    seg[0, :32] = 1
    seg[1, :, 32:] = 2
    losses = h.loss([torch.randn(2, 32, 4, 4)], samples(seg), train_cfg={})
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    assert h.class_embed.weight.grad.abs().sum() > 0
    assert h.class_tokens.weight.grad.abs().sum() > 0


def _keys_matrix(n_in, n_out, a=-0.75):
    """Hand-built 1-D bicubic resampling matrix (n_out, n_in): Keys' cubic convolution
    kernel with a = -0.75 (PyTorch's and OpenCV's), align_corners=False, and taps
    past the border clamped to the edge sample."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(src)
        for k in range(x0 - 1, x0 + 3):
            m[o, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return m


def test_position_embedding_is_resized_bicubically_with_the_right_values():
    """SAM ViT's absolute position table at other input sizes, against a hand bicubic.

    Planted tables: a linear ramp and a random one. (A linear ramp alone is not
    enough: Keys' kernel reproduces linear functions only for a = -0.5, and
    PyTorch uses a = -0.75.)
    """
    from mmseg_naslora.checkpoint.base_weights import resize_pos_embed
    h_in, w_in, c = 8, 10, 3
    i = torch.arange(h_in, dtype=torch.float64)[:, None, None]
    j = torch.arange(w_in, dtype=torch.float64)[None, :, None]
    ramp = (torch.tensor([0.5, -1., 2.]) * i + torch.tensor([-0.25, 0.75, 1.5]) * j)
    g = torch.Generator().manual_seed(0)
    for table in (ramp, torch.randn(h_in, w_in, c, generator=g, dtype=torch.float64)):
        pos = table.float()[None]  # (1, H, W, C)
        assert resize_pos_embed(pos, (h_in, w_in)) is pos
        for h_out, w_out in ((13, 17), (5, 6), (16, 20)):
            out = resize_pos_embed(pos, (h_out, w_out))
            assert out.shape == (1, h_out, w_out, c) and out.dtype == pos.dtype
            mh, mw = _keys_matrix(h_in, h_out), _keys_matrix(w_in, w_out)
            want = torch.einsum('oh,hwc,pw->opc', mh, table, mw)
            torch.testing.assert_close(out[0].double(), want, atol=1e-5, rtol=1e-5)
    # the reference tells bicubic from bilinear
    bilinear = F.interpolate(pos.permute(0, 3, 1, 2), size=(13, 17), mode='bilinear',
                             align_corners=False).permute(0, 2, 3, 1)
    assert (bilinear - resize_pos_embed(pos, (13, 17))).abs().max() > 0.05

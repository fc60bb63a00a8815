import pytest
import torch
from conftest import TINY_DECODER
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmseg_naslora.models.decode_heads import SAMMaskDecoderHead
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
    else:  # symmetry-breaking noise of about the token's own standard deviation
        scale = first.std() * first.numel()**0.5
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
    scores = SAMMaskDecoderHead.semantic_scores(cls, masks)
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

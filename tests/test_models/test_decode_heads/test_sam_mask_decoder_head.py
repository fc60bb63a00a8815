import pytest
import torch
from conftest import TINY_DECODER
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmseg_naslora.models.decode_heads import SAMMaskDecoderHead

LOSS = dict(type='CrossEntropyLoss', use_sigmoid=True, avg_non_ignore=True)


def tiny_head(**kwargs) -> SAMMaskDecoderHead:
    return SAMMaskDecoderHead(loss_decode=LOSS, **TINY_DECODER, **kwargs)


def samples(masks):
    out = []
    for m in masks:
        s = SegDataSample(gt_sem_seg=PixelData(data=m[None]))
        s.set_metainfo(dict(img_shape=m.shape, pad_shape=m.shape, ori_shape=m.shape))
        out.append(s)
    return out


def test_output_is_one_logit_map_at_input_size():
    head = tiny_head()
    out = head([torch.randn(2, 32, 4, 5)])
    assert out.shape == (2, 1, 64, 80)


def test_prompt_encoder_and_iou_head_frozen_rest_trains():
    head = tiny_head()
    frozen = {n.split('.')[0] if n.startswith('prompt') else '.'.join(n.split('.')[:2])
              for n, p in head.named_parameters() if not p.requires_grad}
    assert frozen == {'prompt_encoder', 'mask_decoder.iou_prediction_head'}
    trainable = {'.'.join(n.split('.')[:2]) for n, p in head.named_parameters() if p.requires_grad}
    assert {'mask_decoder.transformer', 'mask_decoder.output_upscaling',
            'mask_decoder.output_hypernetworks_mlps', 'mask_decoder.mask_tokens'} <= trainable
    assert not hasattr(head, 'conv_seg')


def test_loads_official_prompt_encoder_and_mask_decoder(official_sam):
    sam, path = official_sam
    head = tiny_head(checkpoint=path)
    head.init_weights()
    for name in ('prompt_encoder', 'mask_decoder'):
        ref = getattr(sam, name).state_dict()
        got = getattr(head, name).state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_matches_segment_anything_single_mask_output(official_sam):
    """With no prompt, the head equals SAM's own decoder on one image."""
    sam, path = official_sam
    head = tiny_head(checkpoint=path)
    head.init_weights()
    emb = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        ref, _ = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                  multimask_output=False)
        ours = head.predict_masks(emb)[0][:, :1]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    head = tiny_head()
    feats = [torch.randn(2, 32, 4, 4)]
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, 10:40, 10:40] = 1
    masks[1, 30:60, 5:25] = 1
    masks[1, :4] = 255
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = head.loss(feats, samples(masks), train_cfg={})['loss_ce']
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_predict_gives_binary_map_through_mmseg_postprocess():
    from mmengine.config import ConfigDict
    from mmseg.models import EncoderDecoder
    model = EncoderDecoder(
        backbone=dict(type='SAMViT', arch=dict(embed_dims=32, depth=1, num_heads=2,
                                               global_attn_indexes=(0, )),
                      img_size=64, out_channels=32),
        decode_head=dict(type='SAMMaskDecoderHead', loss_decode=LOSS, **TINY_DECODER),
        data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
        test_cfg=ConfigDict(mode='slide', crop_size=(64, 64), stride=(32, 32)))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 96, 96)).float()],
                                        data_samples=samples([torch.zeros(96, 96).long()])))
    out = model.predict(data['inputs'], data['data_samples'])
    pred = out[0].pred_sem_seg.data
    assert pred.shape == (1, 96, 96)
    assert set(pred.unique().tolist()) <= {0, 1}
    logits = out[0].seg_logits.data
    # mmseg stores sigmoid probabilities in seg_logits for a 1-channel head.
    assert torch.equal(pred[0].bool(), logits[0] > 0.5)


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(ValueError, match='needs num_classes=2'):
        SAMMaskDecoderHead(num_classes=5, out_channels=1, loss_decode=LOSS)
    with pytest.raises(ValueError, match='num_mask_tokens=3 must be at least num_classes=5'):
        SAMMaskDecoderHead(num_classes=5, num_mask_tokens=3, loss_decode=LOSS)
    with pytest.raises(ValueError, match="mode must be 'set' or 'per_class'"):
        SAMMaskDecoderHead(num_classes=5, mode='panoptic', loss_decode=LOSS)


def test_mask_token_1_is_segment_anythings_first_multimask_output(official_sam):
    """The SAM2LoRA reference trains the first mask of multimask_output=True."""
    sam, path = official_sam
    head = tiny_head(checkpoint=path, mask_token=1)
    head.init_weights()
    emb = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        ref, ref_iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                        multimask_output=True)
        logits, iou_token = head._logits_and_iou([emb])
    assert torch.allclose(logits, torch.nn.functional.interpolate(
        ref[:, :1], scale_factor=4, mode='bilinear', align_corners=False), atol=1e-5)
    iou = head.mask_decoder.iou_prediction_head(iou_token)
    assert torch.allclose(iou[:, 1:], ref_iou, atol=1e-5)


def test_iou_loss_is_the_mean_absolute_error_against_sklearns_jaccard():
    from sklearn.metrics import jaccard_score
    torch.manual_seed(0)
    head = tiny_head(mask_token=2, iou_loss_weight=0.1)
    feats = [torch.randn(2, 32, 4, 4)]
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, 8:40, 8:40] = 1
    labels[1, 20:60, 4:30] = 1
    labels[1, :6] = 255  # left out of the IoU as of every loss
    losses = head.loss(feats, samples(labels), train_cfg={})
    with torch.no_grad():
        logits, iou_token = head._logits_and_iou(feats)
        predicted = head.mask_decoder.iou_prediction_head(iou_token)[:, 2]
    errors = []
    for i in range(2):
        keep = (labels[i] != 255).flatten().numpy()
        y_pred = (logits[i, 0] > 0).flatten().numpy()[keep]
        y_true = (labels[i] == 1).flatten().numpy()[keep]
        errors.append(abs(predicted[i].item() - jaccard_score(y_true, y_pred, zero_division=0)))
    assert losses['loss_iou'].item() == pytest.approx(0.1 * sum(errors) / 2, abs=1e-5)
    assert 'loss_ce' in losses


@pytest.mark.parametrize('iou_loss_weight', [0., 0.1])
def test_iou_head_trains_only_with_the_iou_loss(iou_loss_weight):
    head = tiny_head(mask_token=1, iou_loss_weight=iou_loss_weight)
    labels = torch.randint(0, 2, (2, 64, 64))
    losses = head.loss([torch.randn(2, 32, 4, 4)], samples(labels), train_cfg={})
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    iou_head = list(head.mask_decoder.iou_prediction_head.parameters())
    assert all(p.requires_grad == (iou_loss_weight > 0) for p in iou_head)
    if iou_loss_weight:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in iou_head)
    assert not [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]


def test_mask_token_and_iou_loss_are_checked():
    with pytest.raises(ValueError, match='mask_token=4'):
        tiny_head(mask_token=4)
    with pytest.raises(ValueError, match='iou_loss_weight must be >= 0'):
        tiny_head(iou_loss_weight=-1)
    with pytest.raises(ValueError, match='binary head'):
        SAMMaskDecoderHead(num_classes=3, mode='per_class', mask_token=1, **TINY_DECODER,
                           loss_decode=LOSS)

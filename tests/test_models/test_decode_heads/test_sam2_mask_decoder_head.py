import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

pytest.importorskip('sam2', reason='SAM2 is installed from requirements/sam2.txt')
from sam2_tiny import (TINY_DIM, TINY_HIERA, TINY_SAM2_DECODER,  # noqa: E402
                       build_official_sam2, save_official)

from mmseg_naslora.models.adapters.inject import iter_adapters  # noqa: E402
from mmseg_naslora.models.backbones.sam2_hiera import SAM2Hiera  # noqa: E402
from mmseg_naslora.models.decode_heads.sam2_mask_decoder_head import (  # noqa: E402
    SAM2MaskDecoderHead, SAM2MaskSetHead)

COMPOSITE = [
    dict(type='CrossEntropyLoss', use_sigmoid=True, avg_non_ignore=True, loss_name='loss_bce'),
    dict(type='SoftDiceLoss'),
    dict(type='FocalTverskyLoss'),
]
# A 32-wide decoder with a small MLP for the tests that need no official weights.
SMALL = dict(in_channels=TINY_DIM, channels=TINY_DIM, transformer_mlp_dim=64,
             transformer_num_heads=2, iou_head_hidden_dim=32)


@pytest.fixture(scope='module')
def official_sam2(tmp_path_factory):
    sam2 = build_official_sam2()
    return sam2, save_official(sam2, str(tmp_path_factory.mktemp('ckpt') / 'sam2_tiny.pt'))


def official_head(path, **kwargs) -> SAM2MaskDecoderHead:
    head = SAM2MaskDecoderHead(checkpoint=path, loss_decode=COMPOSITE, **TINY_SAM2_DECODER,
                               **kwargs)
    head.init_weights()
    return head.eval()


def features(batch=1, h=4, w=4):
    torch.manual_seed(1)
    return [torch.randn(batch, TINY_DIM, h * s, w * s) for s in (4, 2, 1)]


def test_loads_official_sam_prompt_encoder_and_mask_decoder(official_sam2):
    sam2, path = official_sam2
    head = official_head(path, decoder_adapter=dict(type='LoRA', rank=2, lora_alpha=4))
    assert head.prompt_encoder.state_dict().keys() == sam2.sam_prompt_encoder.state_dict().keys()
    assert all(torch.equal(v, head.prompt_encoder.state_dict()[k])
               for k, v in sam2.sam_prompt_encoder.state_dict().items())
    got = head.mask_decoder.state_dict()
    for key, value in sam2.sam_mask_decoder.state_dict().items():
        for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            key = key.replace(f'.{proj}.', f'.{proj}.base_layer.')
        assert torch.equal(got[key], value), key


def test_matches_sam2_mask_decoder_without_prompt(official_sam2):
    """The head equals sam_mask_decoder(...) called as SAM2ImagePredictor does, no prompt."""
    sam2, path = official_sam2
    head = official_head(path)
    feats = features()
    dec = sam2.sam_mask_decoder
    with torch.no_grad():
        sparse, dense = sam2.sam_prompt_encoder(points=None, boxes=None, masks=None)
        ref, _, _, _ = dec(image_embeddings=feats[2],
                           image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                           multimask_output=False, repeat_image=False,
                           high_res_features=[dec.conv_s0(feats[0]), dec.conv_s1(feats[1])])
        masks, _ = head.predict_masks(*head._decoder_inputs(feats))
        logits = head(feats)
    assert ref.shape == (1, 1, 16, 16)
    assert torch.allclose(masks[:, :1], ref, atol=1e-5)
    assert logits.shape == (1, 1, 64, 64)
    assert torch.allclose(logits, torch.nn.functional.interpolate(
        ref, scale_factor=4, mode='bilinear', align_corners=False), atol=1e-5)


@pytest.mark.filterwarnings('ignore:.*torch.jit.script.*:FutureWarning')
def test_backbone_and_head_reproduce_sam2_image_predictor(official_sam2):
    """SAM2Hiera + head = SAM2ImagePredictor.set_image + predict (no prompt, one mask)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    sam2, path = official_sam2
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    predictor = SAM2ImagePredictor(sam2)
    predictor._bb_feat_sizes = [(16, 16), (8, 8), (4, 4)]  # hard-coded for 1024 inputs
    predictor.set_image(image)
    with torch.no_grad():
        _, _, ref = predictor._predict(None, None, multimask_output=False, return_logits=True)
    backbone = SAM2Hiera(arch=TINY_HIERA, out_channels=TINY_DIM, checkpoint=path,
                         adapter=dict(type='LoRA', rank=2, lora_alpha=4, dropout=0.1))
    backbone.init_weights()
    head = official_head(path, decoder_adapter=dict(type='LoRA', rank=2, lora_alpha=4, dropout=0.1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.no_grad():
        masks, _ = head.predict_masks(*head._decoder_inputs(backbone.eval()(x)))
    # The predictor clamps its low-resolution logits to [-32, 32].
    assert torch.allclose(masks[:, :1].clamp(-32, 32), ref, atol=1e-4)


def test_decoder_lora_counts_and_trainable_parameters_match_the_formula():
    rank, dim = 4, TINY_DIM
    head = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL,
                               decoder_adapter=dict(type='LoRA', rank=rank, lora_alpha=2 * rank,
                                                    dropout=0.1))
    names = head.decoder_adapted_layers
    attns = [f'layers.{i}.{a}' for i in range(2)
             for a in ('self_attn', 'cross_attn_token_to_image', 'cross_attn_image_to_token')]
    attns.append('final_attn_token_to_image')
    assert names == [f'{a}.{p}' for a in attns for p in ('q_proj', 'k_proj', 'v_proj', 'out_proj')]
    # Self-attention works at the full width C, the cross attentions at C/2
    # (downsample 2): each attention adds r(C + d) to q, k, v and r(d + C) to out.
    per_attn = {'self_attn': 4 * rank * (dim + dim)}
    per_attn.update({a: 4 * rank * (dim + dim // 2)
                     for a in ('cross_attn_token_to_image', 'cross_attn_image_to_token',
                               'final_attn_token_to_image')})
    expected = sum(per_attn[a.split('.')[-1]] for a in attns)
    assert expected == 46 * rank * dim
    trainable = {n: p.numel() for n, p in head.named_parameters() if p.requires_grad}
    # freeze_decoder defaults to True with a decoder adapter: only LoRA trains.
    assert head.freeze_decoder
    assert all('.lora_A.' in n or '.lora_B.' in n for n in trainable)
    assert sum(trainable.values()) == expected
    assert all(a.scaling == 2 for _, a in iter_adapters(head))


def test_without_adapters_the_decoder_trains_except_prompt_iou_and_object_heads():
    head = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL)
    assert not head.freeze_decoder
    frozen = {'.'.join(n.split('.')[:2]) for n, p in head.named_parameters()
              if not p.requires_grad}
    assert frozen == {'prompt_encoder.point_embeddings', 'prompt_encoder.not_a_point_embed',
                      'prompt_encoder.mask_downscaling', 'prompt_encoder.no_mask_embed',
                      'mask_decoder.iou_prediction_head', 'mask_decoder.pred_obj_score_head'}
    trainable = {'.'.join(n.split('.')[:2]) for n, p in head.named_parameters() if p.requires_grad}
    assert {'mask_decoder.transformer', 'mask_decoder.conv_s0', 'mask_decoder.conv_s1',
            'mask_decoder.obj_score_token', 'mask_decoder.output_upscaling'} <= trainable
    # Adapters and a trainable decoder can be combined explicitly.
    both = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL, freeze_decoder=False,
                               decoder_adapter=dict(type='LoRA', rank=2))
    assert both.mask_decoder.output_upscaling[0].weight.requires_grad


def test_decoder_lora_equals_the_frozen_decoder_at_init(official_sam2):
    _, path = official_sam2
    plain = official_head(path)
    adapted = official_head(path, decoder_adapter=dict(type='LoRA', rank=4, lora_alpha=8,
                                                       dropout=0.1))
    feats = features(batch=2)
    adapted.train()  # B = 0: LoRA dropout has nothing to drop yet
    with torch.no_grad():
        assert torch.allclose(adapted(feats), plain(feats), atol=1e-6)


def test_only_decoder_lora_learns_with_the_composite_loss():
    torch.manual_seed(0)
    head = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL,
                               decoder_adapter=dict(type='LoRA', rank=4, lora_alpha=8))
    before = {n: p.clone() for n, p in head.named_parameters()}
    feats = features(batch=2)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, 10:40, 10:40] = 1
    masks[1, 30:60, 5:25] = 1
    samples = []
    for m in masks:
        s = SegDataSample(gt_sem_seg=PixelData(data=m[None]))
        s.set_metainfo(dict(img_shape=m.shape, pad_shape=m.shape, ori_shape=m.shape))
        samples.append(s)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    totals = []
    for _ in range(15):
        losses = head.loss(feats, samples, train_cfg={})
        assert {'loss_bce', 'loss_sdice', 'loss_ftversky'} <= set(losses)
        total = losses['loss_bce'] + losses['loss_sdice'] + losses['loss_ftversky']
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    # Attention-only LoRA in a random frozen decoder learns slowly, but it learns.
    assert totals[-1] < totals[0] - 0.02
    changed = {n for n, p in head.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all('.lora_' in n for n in changed)


@pytest.mark.parametrize('mode', ['set', 'per_class'])
def test_multiclass_modes_on_sam2(mode):
    head = SAM2MaskDecoderHead(loss_decode=dict(type='CrossEntropyLoss'), **SMALL,
                               num_classes=3, mode=mode,
                               decoder_adapter=dict(type='LoRA', rank=2))
    assert isinstance(head, SAM2MaskSetHead) == (mode == 'set')
    out = head(features(batch=2))
    if mode == 'set':
        cls_logits, mask_logits = out
        assert cls_logits.shape == (2, 6, 4) and mask_logits.shape == (2, 6, 16, 16)
        new = ('class_tokens', 'class_embed')
    else:
        assert out.shape == (2, 3, 64, 64)
        new = ('class_tokens', 'class_hypernetworks')
    # The new class parts have no pretrained weights and train even with a frozen decoder.
    trainable = {n.split('.')[0] for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {'mask_decoder', *new}


def test_bad_settings_are_refused_clearly():
    with pytest.raises(ValueError, match='token-wise adapter'):
        SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL,
                            decoder_adapter=dict(type='ConvLoRA', rank=2))
    head = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL)
    with pytest.raises(ValueError, match='stride-4 and stride-8 features'):
        head([torch.randn(1, TINY_DIM, 4, 4)])
    feats = features()
    with pytest.raises(ValueError, match='inputs\\[1\\] is \\(4, 4\\), expected 2x'):
        head([feats[0], feats[2], feats[2]])
    # Without high-resolution features the plain SAM upscaling path is used.
    plain = SAM2MaskDecoderHead(loss_decode=COMPOSITE, **SMALL, use_high_res_features=False)
    assert plain([feats[2]]).shape == (1, 1, 64, 64)

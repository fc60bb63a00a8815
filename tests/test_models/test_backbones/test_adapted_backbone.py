"""AdaptedBackbone: adapters in mmseg's VisionTransformer, BEiT and MAE (issue 18, part 3)."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper, OptimWrapperDict, build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_naslora  # noqa: F401  (registers AdaptedBackbone and the adapters)
from mmseg_naslora.models.adapters import (LINEAR_PRIMITIVES, LoRA, NASLoRA, export_adapters,
                                           iter_adapters)
from mmseg_naslora.models.adapters.arch import is_arch_name
from mmseg_naslora.models.backbones.adapted_backbone import AdaptedBackbone, QKVSelfAttention

SIZE = 64
BACKBONES = ['VisionTransformer', 'BEiT', 'MAE']
NAS_OPTIM = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-2, weight_decay=1e-4)),
    alpha=dict(type='OptimWrapper',
               optimizer=dict(type='Adam', lr=1e-2, betas=(0.5, 0.999), weight_decay=0.)))


def inner_cfg(kind: str, img_size=SIZE) -> dict:
    return dict(type=kind, img_size=img_size, embed_dims=32, num_layers=2, num_heads=2,
                mlp_ratio=2, out_indices=(0, 1))


def randomise(module: nn.Module, seed: int = 0) -> None:
    """Random values everywhere, so exactness tests see non-trivial q/v biases and tables."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            # Small, like the trained weights: outputs of order 1, so 1e-6 is fp32-tight.
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def randomise_b(model: nn.Module) -> None:
    # B = 0 at init makes the adapters' output (and dL/dα) zero; give them some.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'lora_B' in name:
                p.normal_(std=0.1)


def adapted(kind: str, adapter=None, tmp_path=None, img_size=SIZE, **kwargs):
    """An inner backbone with random weights, and the AdaptedBackbone that loads them."""
    torch.manual_seed(0)
    ref = MODELS.build(inner_cfg(kind, img_size))
    randomise(ref)
    model = AdaptedBackbone(backbone=inner_cfg(kind, img_size), adapter=adapter, **kwargs)
    if tmp_path is not None:
        path = str(tmp_path / f'{kind}.pth')
        # mmseg checkpoints of whole segmentors carry a `backbone.` prefix: stripped.
        torch.save({f'backbone.{k}': v for k, v in ref.state_dict().items()}, path)
        model.checkpoint = path
        model.init_weights()
    ref.eval()  # mmseg's ViT train() returns None, so no chaining
    return ref, model


@pytest.mark.parametrize('kind', BACKBONES)
def test_conversion_keeps_outputs_exactly(kind, tmp_path):
    ref, model = adapted(kind, tmp_path=tmp_path)
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(ref(x), model(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    qkv = [n for n, m in model.named_modules() if n.endswith('qkv') and isinstance(m, nn.Linear)]
    assert len(qkv) == 2
    if kind == 'VisionTransformer':
        assert all(isinstance(layer.attn.attn, QKVSelfAttention) for layer in model.backbone.layers)


@pytest.mark.parametrize('batch_first', [True, False])
def test_qkv_self_attention_equals_nn_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=batch_first).eval()
    qkv = QKVSelfAttention(mha).eval()
    assert qkv.qkv.weight is mha.in_proj_weight  # the same parameters, not copies
    x = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, -2:] = True
    causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
    with torch.no_grad():
        for masks in ({}, dict(key_padding_mask=pad), dict(attn_mask=causal)):
            torch.testing.assert_close(qkv(x, x, x, **masks)[0], mha(x, x, x, **masks)[0],
                                       atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match='self-attention only'):
            qkv(x, x.clone(), x)


@pytest.mark.parametrize('kind', BACKBONES)
def test_adapter_starts_as_the_base_model_and_only_adapters_train(kind, tmp_path):
    ref, model = adapted(kind, dict(type='NASLoRA', rank=3), tmp_path=tmp_path)
    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(ref(x), model(x)):  # B = 0 survived the inner init_weights
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all('.qkv.' in n and 'base_layer' not in n for n in trainable)
    assert len(model.adapted_layers) == 2


def make_batch(num=2, seed=0, size=(SIZE, SIZE)) -> dict:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=(torch.rand(1, *size, generator=gen) > .5).long())
        sample.set_metainfo(dict(img_shape=size, ori_shape=size))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, *size), generator=gen, dtype=torch.uint8)
              for _ in range(num)]
    return dict(inputs=inputs, data_samples=samples)


def segmentor(kind: str, adapter: dict, img_size=SIZE, size=(SIZE, SIZE)):
    nas = adapter['type'] == 'NASLoRA'
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='NASEncoderDecoder' if nas else 'EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=size),
        backbone=dict(type='AdaptedBackbone', backbone=inner_cfg(kind, img_size),
                      adapter=adapter),
        decode_head=dict(type='FCNHead', in_channels=32, in_index=1, channels=16, num_convs=1,
                         num_classes=2, loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=ConfigDict(mode='whole'),
        **(dict(search_step='joint') if nas else {})))
    model.init_weights()
    randomise_b(model)
    if nas:
        optim = build_optim_wrapper(model, NAS_OPTIM)
        assert isinstance(optim, OptimWrapperDict)
        model.set_step_plan('search', True)  # as NASStageHook drives it after T_B
    else:
        optim = OptimWrapper(torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-2))
    return model, optim


@pytest.mark.parametrize('adapter', ['LoRA', 'NASLoRA'])
@pytest.mark.parametrize('kind', BACKBONES)
def test_a_few_train_steps_train_only_the_adapters(kind, adapter):
    model, optim = segmentor(kind, dict(type=adapter, rank=3))
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()
              if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.backbone.named_parameters()
                if p.requires_grad}
    x = torch.randn(1, 3, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        before = model.backbone(x)[-1]
    model.train()
    for step in range(3):
        log = model.train_step(make_batch(seed=step), optim)
        assert all(torch.isfinite(v).all() for k, v in log.items() if k.startswith('loss'))
    model.eval()
    with torch.no_grad():
        after = model.backbone(x)[-1]
    assert frozen and all(torch.equal(p, frozen[n])
                          for n, p in model.backbone.named_parameters() if n in frozen)
    moved = [n for n, p in model.backbone.named_parameters()
             if n in adapters and not torch.equal(p, adapters[n])]
    assert any('lora_A' in n for n in moved) and any('lora_B' in n for n in moved)
    if adapter == 'NASLoRA':
        assert any(is_arch_name(n) for n in moved)  # the α of the stage-wise search
    assert not torch.allclose(before, after)


@pytest.mark.parametrize('kind', BACKBONES)
def test_lora_fold_equals_the_adapted_model(kind):
    _, model = adapted(kind, dict(type='LoRA', rank=3))
    randomise_b(model)
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        exported = copy.deepcopy(model)
        assert export_adapters(exported, 'fold') is None
        assert not list(iter_adapters(exported))
        for a, b in zip(expected, exported(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # tools/export.py's config takes adapter=None: the same layout, key for key.
    plain = AdaptedBackbone(backbone=inner_cfg(kind), adapter=None)
    plain.load_state_dict(exported.state_dict(), strict=True)


@pytest.mark.parametrize('kind', BACKBONES)
def test_linear_bn_nas_collapse_equals_the_adapted_model(kind):
    _, model = adapted(kind, dict(type='NASLoRA', rank=3, op_variant='linear_bn',
                                  primitives=list(LINEAR_PRIMITIVES)))
    randomise_b(model)
    with torch.no_grad():
        for _, a in iter_adapters(model):
            a.nas_alpha.normal_()
        model.train()
        for _ in range(3):  # non-trivial BN running statistics
            model(torch.randn(2, 3, SIZE, SIZE))
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        exported = copy.deepcopy(model)
        cfg = export_adapters(exported, 'collapse')
        assert cfg['type'] == 'ConvBottleneckLoRA'
        for a, b in zip(expected, exported(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_cls_token_gets_an_identity_bottleneck():
    torch.manual_seed(0)
    adapter = MODELS.build(dict(type='NASLoRA', rank=3, base_layer=nn.Linear(8, 24)))
    randomise_b(adapter)
    adapter.eval()
    x = torch.randn(2, 1 + 3 * 5, 8)
    adapter.grid_size = (3, 5)
    with pytest.raises(ValueError, match='do not form a 3x5 grid'):
        adapter(x)  # without the prefix count the class token breaks the grid
    adapter.prefix_tokens = 1
    with torch.no_grad():
        out = adapter(x)
        plain = adapter.base_layer(x[:, :1]) + adapter.scaling * adapter.lora_B(
            adapter.lora_A(x[:, :1]))
        torch.testing.assert_close(out[:, :1], plain)  # s·B·A·x, no cell
        adapter.prefix_tokens = 0
        torch.testing.assert_close(out[:, 1:], adapter(x[:, 1:]))  # the cell on the grid
    # A token-wise spatial bottleneck skipping the class token is not one merged weight.
    conv1x1 = MODELS.build(dict(type='ConvBottleneckLoRA', kernel_size=1, mask_padding=False,
                                base_layer=nn.Linear(8, 24)))
    assert conv1x1.mergeable
    conv1x1.prefix_tokens = 1
    assert not conv1x1.mergeable and 'prefix (class)' in conv1x1._merge_refusal()
    assert LoRA.prefix_tokens == 0  # default: every other backbone is unchanged


def test_wrapper_sets_the_token_layout_at_a_non_square_input():
    _, model = adapted('VisionTransformer', dict(type='NASLoRA', rank=3))
    randomise_b(model)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 4, 6)] * 2
    layouts = {(a.prefix_tokens, a.grid_size) for _, a in iter_adapters(model)}
    assert layouts == {(1, (4, 6))}
    with torch.no_grad():  # the grid follows the input, call by call
        model(torch.randn(1, 3, 48, 80))
    assert {a.grid_size for _, a in iter_adapters(model)} == {(3, 5)}


def test_vit_without_cls_token_has_no_prefix():
    model = AdaptedBackbone(backbone=dict(inner_cfg('VisionTransformer'), with_cls_token=False),
                            adapter=dict(type='ConvLoRA', rank=4))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert {(a.prefix_tokens, a.grid_size) for _, a in iter_adapters(model)} == {(0, (4, 6))}


def test_beit_and_mae_train_non_square_at_their_img_size():
    model, optim = segmentor('BEiT', dict(type='NASLoRA', rank=3), img_size=(64, 96),
                             size=(64, 96))
    log = model.train_step(make_batch(size=(64, 96)), optim)
    assert torch.isfinite(log['decode.loss_ce'])
    _, mae = adapted('MAE', dict(type='LoRA'), img_size=(64, 96))
    assert tuple(mae(torch.randn(1, 3, 64, 96))[0].shape) == (1, 32, 4, 6)
    # Their position tables are fixed: another size is refused with the fix.
    with pytest.raises(ValueError, match='set backbone.img_size'):
        mae(torch.randn(1, 3, 64, 64))


def test_adapter_blocks_selects_layers():
    model = AdaptedBackbone(backbone=inner_cfg('BEiT'), adapter=dict(type='LoRA'),
                            adapter_blocks=[1])
    assert model.adapted_layers == ['layers.1.attn.qkv']


def test_unsupported_backbones_are_refused_with_what_is_missing():
    with pytest.raises(ValueError, match='no attention module with a qkv projection'):
        AdaptedBackbone(backbone=dict(type='ResNetV1c', depth=18), adapter=dict(type='LoRA'))
    # SegFormer attends with nn.MultiheadAttention but on a reduced key grid.
    mit = dict(type='MixVisionTransformer', embed_dims=16, num_stages=2, num_layers=[1, 1],
               num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], sr_ratios=[8, 4],
               out_indices=(0, 1))
    with pytest.raises(ValueError, match='token layout .* is unknown'):
        AdaptedBackbone(backbone=mit, adapter=dict(type='LoRA'))
    with pytest.raises(ValueError, match='AdaptedBackbone\\(checkpoint=...\\)'):
        AdaptedBackbone(backbone=dict(inner_cfg('VisionTransformer'), pretrained='x.pth'))


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    ref = MODELS.build(inner_cfg('VisionTransformer'))
    state = ref.state_dict()
    state.pop('layers.0.attn.attn.in_proj_weight')
    torch.save(state, str(tmp_path / 'bad.pth'))
    model = AdaptedBackbone(backbone=inner_cfg('VisionTransformer'), adapter=dict(type='LoRA'),
                            checkpoint=str(tmp_path / 'bad.pth'))
    with pytest.raises(ValueError, match='layers.0.attn.attn.qkv.weight'):
        model.init_weights()


def test_nas_alpha_is_found_by_the_constructor():
    model, optim = segmentor('MAE', dict(type='NASLoRA', rank=3))
    alphas = [n for n, _ in model.named_parameters() if is_arch_name(n)]
    assert len(alphas) == 2
    alpha_ids = {id(p) for g in optim['alpha'].optimizer.param_groups for p in g['params']}
    assert alpha_ids == {id(p) for n, p in model.named_parameters() if is_arch_name(n)}
    assert isinstance(next(a for _, a in iter_adapters(model)), NASLoRA)

import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

from mmseg_naslora.models.adapters.export import export_adapters
from mmseg_naslora.models.adapters.inject import iter_adapters
from mmseg_naslora.models.adapters.lora import LoRA
from mmseg_naslora.models.adapters.nas_lora import (ALPHA_MARKER,
                                                    ConvBottleneckLoRA, NASLoRA)
from mmseg_naslora.models.adapters.ops import LINEAR_PRIMITIVES

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_ARCH = dict(embed_dims=64, depth=4, num_heads=2, global_attn_indexes=(1, 3))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_sam(adapter):
    return MODELS.build(dict(type='SAMViT', arch=TINY_ARCH, img_size=128,
                             window_size=4, out_channels=32, adapter=adapter))


def trained(model):
    """Stand-in for training: random α, B and op weights at modest scales."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(ALPHA_MARKER):
                p.normal_()
            elif 'lora_B' in name:
                p.normal_(std=0.05)
            elif '.ops.' in name:
                p.normal_(std=0.5)
    # Non-trivial BN statistics for the DARTS variant.
    model.train()
    model(torch.randn(2, 3, 80, 80))
    return model.eval()


def max_diff(a, b, x):
    with torch.no_grad():
        return (a(x)[0] - b(x)[0]).abs().max().item()


def rebuild(adapter_cfg, state_dict):
    model = tiny_sam(adapter_cfg).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


# 5x5 tokens: windows of 4 are padded.
X = torch.randn(1, 3, 80, 80, generator=torch.Generator().manual_seed(0))


def test_fold_lora_matches_and_has_unadapted_keys():
    torch.manual_seed(0)
    model = trained(tiny_sam(dict(type='LoRA', rank=3, alpha=32)))
    exported = copy.deepcopy(model)
    assert export_adapters(exported, 'fold') is None
    assert not list(iter_adapters(exported))
    assert max_diff(model, exported, X) < 1e-5
    plain = tiny_sam(None)
    assert set(exported.state_dict()) == set(plain.state_dict())
    assert 'encoder.blocks.0.attn.qkv.weight' in exported.state_dict()
    reloaded = rebuild(None, exported.state_dict())
    assert max_diff(model, reloaded, X) < 1e-5


def test_fold_token_wise_nas_cell():
    torch.manual_seed(0)
    model = trained(tiny_sam(dict(type='NASLoRA', rank=3, pc_ratio=2 / 3,
                                  primitives=['none', 'skip_connect'])))
    exported = copy.deepcopy(model)
    export_adapters(exported, 'fold')
    assert max_diff(model, exported, X) < 1e-5
    assert set(exported.state_dict()) == set(tiny_sam(None).state_dict())


def test_fold_refuses_spatial_cells():
    model = tiny_sam(dict(type='NASLoRA', rank=3))
    with pytest.raises(ValueError, match='--mode collapse'):
        export_adapters(model, 'fold')
    assert all(isinstance(a, NASLoRA) for _, a in iter_adapters(model))


@pytest.mark.parametrize('extra', [dict(), dict(pc_ratio=2 / 3, residual=True),
                                   dict(primitives=['skip_connect', 'sep_conv_3x3'])])
def test_collapse_matches_and_reloads(extra):
    torch.manual_seed(0)
    cfg = dict(dict(type='NASLoRA', rank=3, op_variant='linear',
                    primitives=LINEAR_PRIMITIVES), **extra)
    model = trained(tiny_sam(cfg))
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported, 'collapse')
    size = 3 if 'primitives' in extra else 9
    assert adapter_cfg == dict(type='ConvBottleneckLoRA', rank=3, alpha=32.,
                               dropout=0., kernel_size=size)
    assert all(isinstance(a, ConvBottleneckLoRA)
               for _, a in iter_adapters(exported))
    assert max_diff(model, exported, X) < 1e-5
    reloaded = rebuild(adapter_cfg, exported.state_dict())
    assert max_diff(model, reloaded, X) < 1e-5


def test_collapse_widens_kernels_of_differently_pruned_layers():
    torch.manual_seed(0)
    keep = [['skip_connect'], ['sep_conv_3x3', 'avg_pool_3x3'], ['dil_conv_3x3'],
            ['none', 'sep_conv_5x5']]
    model = trained(tiny_sam(dict(type='NASLoRA', rank=3, op_variant='linear',
                                  layer_primitives=keep)))
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported, 'collapse')
    assert adapter_cfg['kernel_size'] == 5
    assert {a.conv.weight.shape[-1] for _, a in iter_adapters(exported)} == {5}
    assert max_diff(model, exported, X) < 1e-5
    assert max_diff(model, rebuild(adapter_cfg, exported.state_dict()), X) < 1e-5


def test_collapse_refuses_nonlinear_cells():
    for cfg in (dict(type='NASLoRA', op_variant='darts'),
                dict(type='NASLoRA', op_variant='linear'),  # max-pool
                dict(type='LoRA')):
        with pytest.raises(ValueError, match='--mode collapse needs'):
            export_adapters(tiny_sam(cfg), 'collapse')


def test_topk_keeps_top_ops_and_reloads():
    torch.manual_seed(0)
    model = trained(tiny_sam(dict(type='NASLoRA', rank=3, op_variant='darts')))
    expected = []
    for _, a in iter_adapters(model):
        top = a.nas_alpha.detach().topk(2).indices.sort().values.tolist()
        expected.append([a.primitives[i] for i in top])
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported, 'topk', topk=2)
    assert adapter_cfg['type'] == 'NASLoRA'
    assert adapter_cfg['layer_primitives'] == expected
    assert [a.primitives for _, a in iter_adapters(exported)] == expected
    reloaded = rebuild(adapter_cfg, exported.state_dict())
    assert max_diff(exported, reloaded, X) == 0
    # Dropping ops changes the output, but the layers are the kept ops' mix.
    assert max_diff(model, exported, X) > 0
    with pytest.raises(ValueError, match='topk=K'):
        export_adapters(copy.deepcopy(model), 'topk')
    with pytest.raises(ValueError, match='NAS-LoRA cells only'):
        export_adapters(tiny_sam(dict(type='LoRA')), 'topk', topk=2)


def test_export_errors():
    with pytest.raises(ValueError, match='export mode'):
        export_adapters(tiny_sam(dict(type='LoRA')), 'merge')
    with pytest.raises(ValueError, match='no adapter'):
        export_adapters(tiny_sam(None), 'fold')


TINY_CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)
crop_size = (64, 64)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', size=crop_size),
    backbone=dict(
        type='SAMViT',
        arch=dict(embed_dims=64, depth=4, num_heads=2, global_attn_indexes=(1, 3)),
        img_size=128, window_size=4, out_channels=32, checkpoint=None,
        adapter={adapter}),
    decode_head=dict(type='FCNHead', in_channels=32, channels=32, num_convs=1,
                     num_classes=2),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
"""


def _export_tool():
    spec = importlib.util.spec_from_file_location(
        'naslora_export_tool', osp.join(ROOT, 'tools', 'export.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('mode,adapter,topk', [
    ('fold', "dict(type='LoRA', rank=3, alpha=32)", None),
    ('collapse', "dict(type='NASPCLoRA', rank=3, op_variant='linear', "
     "primitives=['none', 'avg_pool_3x3', 'skip_connect', 'dil_conv_3x3'])", None),
    ('topk', "dict(type='NASLoRA', rank=3)", 3)])
def test_cli_round_trip(tmp_path, capsys, mode, adapter, topk):
    torch.manual_seed(0)
    config = tmp_path / 'tiny.py'
    config.write_text(TINY_CONFIG.format(adapter=adapter))
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    trained(model.backbone)
    ckpt = tmp_path / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), ckpt)

    out = tmp_path / 'out'
    argv = [str(config), str(ckpt), '--mode', mode, '--out', str(out),
            '--repeat', '2']
    _export_tool().main(argv + (['--topk', str(topk)] if topk else []))
    printed = capsys.readouterr().out
    assert 'max abs output difference on a random 64x64 input' in printed
    assert 'CPU latency' in printed

    new_cfg = Config.fromfile(str(out / 'exported_config.py'))
    expected_type = dict(fold=None, collapse='ConvBottleneckLoRA', topk='NASLoRA')[mode]
    assert (new_cfg.model.backbone.adapter or {}).get('type') == expected_type
    exported = MODELS.build(new_cfg.model).eval()
    checkpoint = load_checkpoint(exported, str(out / 'exported.pth'),
                                 map_location='cpu', strict=True)
    assert checkpoint['meta']['mode'] == mode
    if mode == 'fold':
        assert not any(isinstance(m, LoRA) for m in exported.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (model.eval()(x, mode='tensor')
                - exported(x, mode='tensor')).abs().max().item()
    if mode == 'topk':
        assert checkpoint['meta']['max_abs_diff'] > 0
    else:
        assert diff < 1e-5
        assert checkpoint['meta']['max_abs_diff'] < 1e-5

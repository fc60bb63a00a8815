import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

from mmseg_naslora.models.adapters.arch import ALPHA_MARKER, arch_parameters
from mmseg_naslora.models.adapters.conv_bottleneck_lora import ConvBottleneckLoRA
from mmseg_naslora.models.adapters.export import export_adapters
from mmseg_naslora.models.adapters.inject import iter_adapters
from mmseg_naslora.models.adapters.lora import LoRA
from mmseg_naslora.models.adapters.nas_lora import NASLoRA
from mmseg_naslora.models.adapters.ops import LINEAR_PRIMITIVES, Zero

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
    # Non-trivial BN statistics.
    model.train()
    with torch.no_grad():
        for _ in range(3):
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
    model = trained(tiny_sam(dict(type='LoRA', rank=3, lora_alpha=32)))
    exported = copy.deepcopy(model)
    assert export_adapters(exported, 'fold') is None
    assert not list(iter_adapters(exported))
    assert max_diff(model, exported, X) < 1e-5
    plain = tiny_sam(None)
    assert set(exported.state_dict()) == set(plain.state_dict())
    assert 'encoder.blocks.0.attn.qkv.weight' in exported.state_dict()
    reloaded = rebuild(None, exported.state_dict())
    assert max_diff(model, reloaded, X) < 1e-5


@pytest.mark.parametrize('variant', ['linear', 'linear_bn'])
def test_fold_token_wise_nas_cell(variant):
    torch.manual_seed(0)
    cell = dict(type='NASLoRA', rank=3, pc_ratio=2 / 3, op_variant=variant,
                primitives=['none', 'skip_connect'])
    model = trained(tiny_sam(dict(cell, mask_padding=False)))
    exported = copy.deepcopy(model)
    export_adapters(exported, 'fold')
    assert max_diff(model, exported, X) < 1e-5
    assert set(exported.state_dict()) == set(tiny_sam(None).state_dict())
    # Zeroing padded window tokens is not a weight: fold refuses, collapse is exact.
    with pytest.raises(ValueError, match='mask_padding=True'):
        export_adapters(tiny_sam(cell), 'fold')


def test_fold_refuses_spatial_cells():
    model = tiny_sam(dict(type='NASLoRA', rank=3))
    with pytest.raises(ValueError, match='--mode collapse'):
        export_adapters(model, 'fold')
    assert all(isinstance(a, NASLoRA) for _, a in iter_adapters(model))


@pytest.mark.parametrize('variant', ['linear_bn', 'linear'])
@pytest.mark.parametrize('extra', [dict(), dict(pc_ratio=2 / 3, residual=True),
                                   dict(primitives=['skip_connect', 'sep_conv_3x3']),
                                   dict(mask_padding=False)])
def test_collapse_matches_and_reloads(variant, extra):
    """Exact on padded windows (80x80: 5x5 tokens in windows of 4) and global blocks."""
    torch.manual_seed(0)
    cfg = dict(dict(type='NASLoRA', rank=3, op_variant=variant,
                    primitives=LINEAR_PRIMITIVES), **extra)
    model = trained(tiny_sam(cfg))
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported, 'collapse')
    size = 3 if 'primitives' in extra else 9
    assert adapter_cfg == dict(type='ConvBottleneckLoRA', rank=3, lora_alpha=32., dropout=0.,
                               kernel_size=size, bias=variant == 'linear_bn',
                               mask_padding=extra.get('mask_padding', True))
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
    for cfg, bad in ((dict(type='NASLoRA', op_variant='darts'), "'sep_conv_3x3'"),
                     (dict(type='NASLoRA', op_variant='linear_bn'), "'max_pool_3x3'"),
                     (dict(type='ConvLoRA'), 'ConvLoRA is not linear')):
        with pytest.raises(ValueError, match='--mode collapse needs') as error:
            export_adapters(tiny_sam(cfg), 'collapse')
        assert bad in str(error.value)


@pytest.fixture(scope='module')
def searched_model():
    """A tiny SAM whose DARTS cells were trained (α and weights) to fit a target."""
    torch.manual_seed(0)
    model = tiny_sam(dict(type='NASLoRA', rank=3, op_variant='darts')).train()
    x = torch.randn(2, 3, 80, 80)
    target = torch.randn_like(model(x)[0]).detach()
    alphas = {id(p) for _, p in arch_parameters(model)}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in alphas]
    optimiser = torch.optim.Adam([dict(params=weights, lr=1e-2),
                                  dict(params=[p for _, p in arch_parameters(model)],
                                       lr=1e-1)])
    for _ in range(40):
        optimiser.zero_grad()
        (model(x)[0] - target).square().mean().backward()
        optimiser.step()
    return model.eval()


def rel_error(a, b, inputs):
    with torch.no_grad():
        ya, yb = torch.cat([a(x)[0] for x in inputs]), torch.cat([b(x)[0] for x in inputs])
    return ((yb - ya).norm() / ya.norm()).item()


def renormalised_topk(model, k):
    """The old top-k: kept ops' softmax renormalised, 'none' competing for a slot."""
    pruned = copy.deepcopy(model)
    for _, a in iter_adapters(pruned):
        keep = a.nas_alpha.detach().topk(k).indices.sort().values.tolist()
        a.restrict_primitives([a.primitives[i] for i in keep])
    return pruned


def cell_errors(model, pruned_model, z):
    """Per cell: ‖cell(z) - pruned(z)‖ and the bound Σ_dropped w_i·‖O_i(z)‖."""
    rows = []
    with torch.no_grad():
        for (_, full), (_, kept) in zip(iter_adapters(model), iter_adapters(pruned_model)):
            weights = full.arch_weights()
            bound = sum(weights[i] * op(z).norm() for i, (name, op) in
                        enumerate(zip(full.primitives, full.ops))
                        if name not in kept.primitives)
            rows.append(((full.mixed_op(z) - kept.mixed_op(z)).norm().item(), float(bound)))
    return rows


def test_topk_error_is_bounded_by_the_dropped_ops(searched_model):
    """Faithful top-k errs by exactly the dropped ops' terms; renormalising does not."""
    model = searched_model
    assert max(a.arch_weights().max().item() for _, a in iter_adapters(model)) > 0.2
    z = torch.randn(4, 3, 6, 6)
    renormalised_violates = False
    for k in (1, 2, 3):
        exported = copy.deepcopy(model)
        export_adapters(exported, 'topk', topk=k)
        for error, bound in cell_errors(model, exported, z):
            assert error <= bound * (1 + 1e-5) + 1e-7, (k, error, bound)
        renormalised_violates |= any(error > bound * 1.01 for error, bound in
                                     cell_errors(model, renormalised_topk(model, k), z))
    assert renormalised_violates


def test_topk_is_the_cell_with_its_dropped_ops_zeroed(searched_model):
    model = searched_model
    inputs = [torch.randn(1, 3, 80, 80, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    for k in (1, 3, 7):
        exported = copy.deepcopy(model)
        export_adapters(exported, 'topk', topk=k)
        # Independent of prune_topk: the full cell with its dropped ops zeroed.
        reference = copy.deepcopy(model)
        for (_, full), (_, kept) in zip(iter_adapters(reference), iter_adapters(exported)):
            for i, name in enumerate(full.primitives):
                if name not in kept.primitives:
                    full.ops[i] = Zero(full.num_mixed)
        assert rel_error(reference, exported, inputs) < 1e-5, k
    # All real ops kept: exact, where the renormalised version is not.
    assert rel_error(model, exported, inputs) < 1e-5
    assert rel_error(model, renormalised_topk(model, 7), inputs) > 1e-3


def test_topk_never_keeps_none_and_reloads():
    torch.manual_seed(0)
    model = trained(tiny_sam(dict(type='NASLoRA', rank=3, op_variant='darts')))
    with torch.no_grad():
        for _, a in iter_adapters(model):
            a.nas_alpha[a.primitives.index('none')] = 10.
    expected = []
    for _, a in iter_adapters(model):
        real = [i for i, p in enumerate(a.primitives) if p != 'none']
        top = sorted(real, key=lambda i: -a.nas_alpha[i].item())[:2]
        expected.append([a.primitives[i] for i in sorted(top)])
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported, 'topk', topk=2)
    assert adapter_cfg['type'] == 'NASLoRA'
    assert adapter_cfg['layer_primitives'] == expected
    assert [a.primitives for _, a in iter_adapters(exported)] == expected
    reloaded = rebuild(adapter_cfg, exported.state_dict())
    assert max_diff(exported, reloaded, X) == 0
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
    ('fold', "dict(type='LoRA', rank=3, lora_alpha=32)", None),
    ('collapse', "dict(type='NASPCLoRA', rank=3, op_variant='linear_bn', "
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
    assert 'relative error of each export mode on 4 random 64x64 inputs' in printed
    assert 'no test_dataloader' in printed
    lines = dict(line.split(None, 1) for line in printed.splitlines()
                 if line.startswith('  ') and not line.startswith('  topk'))
    assert lines['fold'].startswith('n/a') == (mode != 'fold')
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
        assert checkpoint['meta']['relative_error'] > 0
    else:
        assert diff < 1e-5
        assert checkpoint['meta']['max_abs_diff'] < 1e-5


def _tiny_checkpoint(tmp_path, adapter):
    config = tmp_path / 'tiny.py'
    config.write_text(TINY_CONFIG.format(adapter=adapter))
    model = MODELS.build(Config.fromfile(str(config)).model)
    trained(model.backbone)
    ckpt = tmp_path / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), ckpt)
    return config, ckpt


def test_cli_measures_the_error_on_test_images(tmp_path, capsys, binary_dataset):
    from conftest import tiny_config
    torch.manual_seed(0)
    cell = dict(_delete_=True, type='NASLoRA', rank=3, op_variant='linear_bn',
                primitives=list(LINEAR_PRIMITIVES))
    config = tiny_config(str(tmp_path / 'cfg.py'), binary_dataset,
                         extra=f"model['backbone']['adapter'] = {cell!r}")
    model = MODELS.build(Config.fromfile(config).model)
    trained(model.backbone)
    ckpt = tmp_path / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), ckpt)
    _export_tool().main([config, str(ckpt), '--mode', 'collapse', '--out', str(tmp_path / 'o'),
                         '--repeat', '1', '--num-inputs', '2'])
    printed = capsys.readouterr().out
    assert 'relative error of each export mode on 2 test images of KvasirSEGDataset' in printed
    errors = dict(line.strip().rsplit(None, 1) if not line.strip().startswith(('fold', 'topk 4'))
                  else line.strip().split(None, 1) for line in printed.splitlines()
                  if line.startswith('  '))
    assert float(errors['collapse']) < 1e-5
    assert errors['fold'].startswith('n/a (--mode fold needs token-wise adapters')
    assert float(errors['topk 1']) > float(errors['topk 3']) > 0


def test_cli_names_a_checkpoint_of_another_config_in_a_few_lines(tmp_path):
    config, _ = _tiny_checkpoint(tmp_path, "dict(type='LoRA', rank=3, lora_alpha=32)")
    other = tmp_path / 'other'
    other.mkdir()
    _, ckpt = _tiny_checkpoint(other, "dict(type='NASLoRA', rank=3)")
    with pytest.raises(SystemExit) as error:
        _export_tool().main([str(config), str(ckpt), '--mode', 'fold', '--out',
                             str(tmp_path / 'out')])
    message = str(error.value)
    assert 'does not fit the model of' in message and 'trained with' in message
    assert '0 keys of the model are missing' in message
    assert len(message) < 1200  # not mmengine's full key list


def test_cli_failed_reexport_keeps_the_previous_export(tmp_path, monkeypatch):
    import errno
    config, ckpt = _tiny_checkpoint(tmp_path, "dict(type='LoRA', rank=3, lora_alpha=32)")
    argv = [str(config), str(ckpt), '--mode', 'fold', '--out', str(tmp_path / 'out'),
            '--repeat', '1']
    tool = _export_tool()
    tool.main(argv)
    exported = tmp_path / 'out' / 'exported.pth'
    before = exported.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(OSError, match='no space left on device while writing'):
        tool.main(argv)
    assert exported.read_bytes() == before
    assert not [p for p in (tmp_path / 'out').iterdir() if '.tmp' in p.name]

"""Adapter-only safetensors files: round trip, base checks, safe and atomic I/O, tensor
checksum, damaged files named, configs compared by meaning."""
import json
import logging
import os
import os.path as osp

import pytest
import torch
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW, build_official_sam
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader)
from mmseg_naslora.checkpoint import adapter_file as adapter_file_module
from mmseg_naslora.checkpoint import atomic_io
from mmseg_naslora.checkpoint.adapter_file import (CHECKSUM_KEY, adapter_file_state_dict,
                                                   adapter_state_dict, build_metadata,
                                                   describe_model, description_diff,
                                                   load_adapter_file, read_adapters,
                                                   save_adapters, sha256_file,
                                                   trainable_state_keys)


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_io, '_HASH_CACHE_FILE', str(tmp_path / 'sha256.json'))
    monkeypatch.setattr(atomic_io, '_HASH_CACHE', {})


def model_cfg(sam_path, adapter=None):
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
        backbone=dict(type='SAMViT', arch=dict(TINY_ARCH), img_size=64, window_size=TINY_WINDOW,
                      out_channels=32, checkpoint=sam_path,
                      adapter=adapter or dict(type='LoRA', rank=3, lora_alpha=32)),
        decode_head=dict(type='SAMMaskDecoderHead', num_classes=2, out_channels=1,
                         checkpoint=sam_path,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True),
                         **TINY_DECODER))


def trained_model(cfg, seed=1):
    model = MODELS.build(cfg)
    model.init_weights()
    torch.manual_seed(seed)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_round_trip_and_outputs(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    model = trained_model(cfg)
    path = save_adapters(str(tmp_path / 'adapters.safetensors'), adapter_state_dict(model), cfg)
    tensors, meta = read_adapters(path)
    assert sorted(tensors) == trainable_state_keys(model)
    assert all(torch.equal(tensors[k], model.state_dict()[k]) for k in tensors)
    assert json.loads(meta['base_sha256']) == {sam_path: sha256_file(sam_path)}
    assert json.loads(meta['adapter']) == {'lora_alpha': 32, 'rank': 3, 'type': 'LoRA'}
    # The file is a small fraction of the model.
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert osp.getsize(path) < 0.5 * full
    fresh = MODELS.build(cfg)
    fresh.init_weights()
    load_adapter_file(fresh, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, mode='tensor'), fresh.eval()(x, mode='tensor'))


def test_nas_adapter_file_keeps_alpha_and_bn_statistics(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path, adapter=dict(type='NASLoRA', rank=3, lora_alpha=32,
                                           op_variant='darts'))
    model = trained_model(cfg)
    for name, p in model.named_parameters():
        if 'nas_alpha' in name:
            p.requires_grad_(False)  # e.g. a frozen-α stage at save time
    keys = adapter_state_dict(model).keys()
    assert any(k.endswith('nas_alpha') for k in keys)
    assert any(k.endswith('bn.running_var') for k in keys)
    assert not any('base_layer' in k for k in keys)


def test_mismatched_base_is_refused(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    other = str(tmp_path / 'other_sam.pth')
    sam = build_official_sam()
    with torch.no_grad():
        sam.image_encoder.neck[0].weight.add_(1.0)  # a different base, same shapes
    torch.save(sam.state_dict(), other)
    cfg_other = model_cfg(other)
    model = MODELS.build(cfg_other)
    model.init_weights()
    with pytest.raises(ValueError, match='base checkpoint sha256 differs') as info:
        load_adapter_file(model, path)
    assert 'a.safetensors' in str(info.value) and 'strict=False' in str(info.value)
    # strict=False loads anyway (with a warning).
    load_adapter_file(model, path, strict=False)
    tensors, _ = read_adapters(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())


def test_other_adapter_or_arch_is_refused(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    cfg_rank = model_cfg(sam_path, adapter=dict(type='LoRA', rank=4, lora_alpha=32))
    model = MODELS.build(cfg_rank)
    with pytest.raises(ValueError, match='model.backbone.adapter') as info:
        load_adapter_file(model, path)
    assert '"rank": 3' in str(info.value) and '"rank": 4' in str(info.value)
    # Shapes that cannot fit are refused even with strict=False.
    with pytest.raises(ValueError, match='shape mismatches'):
        load_adapter_file(model, path, strict=False)


def test_non_adapter_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / 'plain.safetensors')
    save_file({'w': torch.zeros(2)}, path)
    with pytest.raises(ValueError, match='not an mmseg_naslora adapter file'):
        read_adapters(path)


def test_checkpoint_loader_reads_safetensors_without_pickle(tmp_path, official_sam,
                                                            monkeypatch):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)

    def no_pickle(*args, **kwargs):
        raise AssertionError('torch.load (pickle) must not be used for safetensors')
    monkeypatch.setattr(torch, 'load', no_pickle)
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert ckpt['meta']['adapter_file'] == path
    assert ckpt['meta']['adapter_metadata']['format'] == adapter_file_module.FORMAT
    assert set(ckpt['state_dict']) == set(read_adapters(path)[0])


def test_sha256_is_cached(tmp_path, official_sam, monkeypatch):
    _, sam_path = official_sam
    digest = sha256_file(sam_path)
    monkeypatch.setattr(atomic_io, '_HASH_CACHE', {})  # only the disk cache is left

    def no_read(*args, **kwargs):
        raise AssertionError('the file must not be hashed again')
    monkeypatch.setattr(atomic_io.hashlib, 'sha256', no_read)
    assert sha256_file(sam_path) == digest


def test_kill_during_adapter_save_keeps_previous_file(tmp_path, official_sam, monkeypatch):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    model = trained_model(cfg)
    path = str(tmp_path / 'adapters.safetensors')
    save_adapters(path, adapter_state_dict(model), cfg)
    before = read_adapters(path)[0]
    real_fsync = os.fsync

    def killed(fd):  # the new bytes are in the temp file; die before the rename
        raise KeyboardInterrupt('killed during save')
    monkeypatch.setattr(os, 'fsync', killed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(path, adapter_state_dict(model), cfg)
    monkeypatch.setattr(os, 'fsync', real_fsync)
    after = read_adapters(path)[0]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert os.listdir(tmp_path).count('adapters.safetensors') == 1
    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]


@pytest.fixture
def adapter_file(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'adapters.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    return path, cfg


def test_checksum_is_written_and_corrupted_values_are_refused(adapter_file):
    path, _ = adapter_file
    tensors, meta = read_adapters(path)
    assert meta[CHECKSUM_KEY] == adapter_file_module.tensors_checksum(tensors)
    with open(path, 'r+b') as f:  # flip one byte of the last tensor's data
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match='corrupted') as info:
        read_adapters(path)
    assert path in str(info.value) and CHECKSUM_KEY in str(info.value)


@pytest.mark.parametrize('damage', ['empty', 'truncated', 'header'])
def test_damaged_file_names_the_file(adapter_file, damage):
    path, cfg = adapter_file
    data = open(path, 'rb').read()
    if damage == 'empty':
        data = b''
    elif damage == 'truncated':
        data = data[:len(data) // 2]
    else:  # garbage in the JSON header
        data = data[:8] + b'{not json at all' + data[24:]
    with open(path, 'wb') as f:
        f.write(data)
    with pytest.raises(ValueError, match='not a readable safetensors file') as info:
        read_adapters(path)
    assert path in str(info.value)
    if damage == 'empty':
        assert 'it is empty' in str(info.value)
    # The checkpoint loader (load_from, tools/test.py) gives the same message.
    from mmengine.runner.checkpoint import CheckpointLoader
    with pytest.raises(ValueError, match='not a readable safetensors file'):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')


def test_file_without_checksum_loads_with_a_warning(tmp_path, official_sam, monkeypatch):
    from safetensors.torch import save_file
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    tensors = adapter_state_dict(trained_model(cfg))
    path = str(tmp_path / 'old.safetensors')
    save_file(tensors, path, metadata=build_metadata(cfg))  # as written before the checksum
    warnings = []
    monkeypatch.setattr(adapter_file_module, 'print_log',
                        lambda msg, **kw: warnings.append((msg, kw.get('level'))))
    loaded, meta = read_adapters(path)
    assert CHECKSUM_KEY not in meta and loaded.keys() == tensors.keys()
    assert any('cannot be verified' in m and path in m and lvl == logging.WARNING
               for m, lvl in warnings)


@pytest.mark.parametrize('written', [
    dict(type='LoRA', rank=3, alpha=32.0),  # the old key, as old files record it
    dict(type='LoRA', rank=3.0, lora_alpha=32, dropout=0.0),
    dict(type='LoRA', rank=3, lora_alpha=32, dropout=0),
])
def test_same_adapter_config_written_differently_is_accepted(tmp_path, official_sam, written):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    other = model_cfg(sam_path, adapter=written)
    model = MODELS.build(other)
    model.init_weights()
    load_adapter_file(model, path)  # strict: must not be refused
    assert description_diff(describe_model(cfg), describe_model(other)) == []


def test_different_adapter_config_is_still_refused(official_sam):
    _, sam_path = official_sam
    ours = describe_model(model_cfg(sam_path))
    for changed in (dict(type='LoRA', rank=3, lora_alpha=16),
                    dict(type='LoRA', rank=3, lora_alpha=32, dropout=0.1),
                    dict(type='ConvLoRA', rank=3, lora_alpha=32)):
        assert description_diff(ours, describe_model(model_cfg(sam_path, adapter=changed))) \
            == ['adapter']
    # Old records keep loading: text that is not JSON is compared as text.
    assert description_diff(dict(ours, arch='not json'), ours) == ['arch']
    assert json.loads(ours['adapter']) == {'lora_alpha': 32, 'rank': 3, 'type': 'LoRA'}


def test_resume_stamp_compares_meaning(official_sam):
    """The AdapterCheckpointHook's stamped-config check (resume) uses the same rule."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmseg_naslora.engine.hooks.adapter_checkpoint_hook import AdapterCheckpointHook
    _, sam_path = official_sam
    stamped = describe_model(model_cfg(sam_path))
    runner = SimpleNamespace(
        cfg=Config(dict(model=model_cfg(sam_path, adapter=dict(type='LoRA', rank=3,
                                                               alpha=32.0, dropout=0.0)))),
        _resume=True, _load_from=None, work_dir='w')
    AdapterCheckpointHook()._check_stamped_config(runner, stamped)  # no error
    runner.cfg.model.backbone.adapter.alpha = 16
    with pytest.raises(ValueError, match='cannot resume from'):
        AdapterCheckpointHook()._check_stamped_config(runner, stamped)


def outputs(model, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return model.eval()(x, mode='tensor')


def test_plain_pytorch_load_completes_an_uninitialised_model(tmp_path, official_sam):
    """``model.load_state_dict`` of the file: each module restores its frozen base itself."""
    sam, sam_path = official_sam
    cfg = model_cfg(sam_path)
    model = trained_model(cfg)
    path = save_adapters(str(tmp_path / 'a.safetensors'), adapter_state_dict(model), cfg)
    fresh = MODELS.build(cfg)  # never initialised, as at test time
    fresh.load_state_dict(adapter_file_state_dict(path), strict=True)
    assert torch.equal(outputs(model), outputs(fresh))
    # The frozen weights are the official file's (the reference), not a copy of the model's.
    official = torch.load(sam_path, weights_only=True)
    assert torch.equal(fresh.backbone.encoder.blocks[0].attn.qkv.base_layer.weight,
                       official['image_encoder.blocks.0.attn.qkv.weight'])
    assert torch.equal(fresh.decode_head.prompt_encoder.no_mask_embed.weight,
                       official['prompt_encoder.no_mask_embed.weight'])


def test_mmseg_init_model_loads_an_adapter_file(tmp_path, official_sam):
    """mmseg's ``init_model`` (mmengine's ``load_checkpoint``, no runner at all)."""
    from mmengine.config import Config
    from mmseg.apis import init_model
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    model = trained_model(cfg)
    path = save_adapters(str(tmp_path / 'a.safetensors'), adapter_state_dict(model), cfg)
    loaded = init_model(Config(dict(model=cfg)), path, device='cpu')
    assert torch.equal(outputs(model), outputs(loaded))


def test_batchnorm_statistics_of_a_trained_head_are_in_the_file(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    cfg['decode_head'] = dict(type='FCNHead', in_channels=32, channels=16, num_convs=1,
                              num_classes=2, norm_cfg=dict(type='BN'),
                              loss_decode=dict(type='CrossEntropyLoss'))
    model = trained_model(cfg)
    with torch.no_grad():  # stand-in for training statistics
        for module in model.decode_head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    path = save_adapters(str(tmp_path / 'a.safetensors'), adapter_state_dict(model), cfg)
    assert 'decode_head.convs.0.bn.running_var' in read_adapters(path)[0]
    fresh = MODELS.build(cfg)
    load_adapter_file(fresh, path)
    assert torch.equal(outputs(model), outputs(fresh))


def test_frozen_weights_without_a_base_checkpoint_are_refused(tmp_path):
    cfg = model_cfg(None)  # random frozen weights: an adapter file cannot restore them
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    with pytest.raises(ValueError, match='no base checkpoint') as info:
        load_adapter_file(MODELS.build(cfg), path)
    assert 'a.safetensors' in str(info.value) and 'SAMViT (backbone)' in str(info.value)


def test_an_unset_arch_means_the_backbone_default():
    """A config without ``arch`` records null; the built backbone knows its default."""
    from mmseg_naslora.checkpoint.adapter_file import describe_backbone
    adapter = dict(type='LoRA', rank=3, lora_alpha=32)
    recorded = describe_model(dict(backbone=dict(type='SAMViT', adapter=adapter)))
    assert json.loads(recorded['arch']) is None
    assert description_diff(recorded, describe_backbone('SAMViT', 'b', adapter)) == []
    assert description_diff(recorded, describe_backbone('SAMViT', 'l', adapter)) == ['arch']


def test_a_frozen_encoder_without_trained_tensors_is_restored_too(tmp_path, official_sam):
    """Decoder-only configs: the file holds no encoder tensor, the encoder comes from SAM."""
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    cfg['backbone']['adapter'] = None
    model = trained_model(cfg)
    path = save_adapters(str(tmp_path / 'a.safetensors'), adapter_state_dict(model), cfg)
    assert not any(k.startswith('backbone.') for k in read_adapters(path)[0])
    fresh = MODELS.build(cfg)
    fresh.load_state_dict(adapter_file_state_dict(path), strict=True)
    assert torch.equal(outputs(model), outputs(fresh))


def fcn_cfg(sam_path, channels=16):
    cfg = model_cfg(sam_path)
    cfg['decode_head'] = dict(type='FCNHead', in_channels=32, channels=channels, num_convs=1,
                              num_classes=2, norm_cfg=dict(type='BN'),
                              loss_decode=dict(type='CrossEntropyLoss'))
    return cfg


def test_the_hook_checks_the_modules_without_base_weights(tmp_path, official_sam):
    """An mmseg head has no load pre-hook, and mmengine's non-strict load only logs its
    mismatch: the AdapterCheckpointHook (every config's default_hooks) refuses it."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmseg_naslora.engine.hooks.adapter_checkpoint_hook import AdapterCheckpointHook
    _, sam_path = official_sam
    cfg = fcn_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    other = fcn_cfg(sam_path, channels=8)
    runner = SimpleNamespace(model=MODELS.build(other), cfg=Config(dict(model=other)),
                             _resume=False)
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    with pytest.raises(ValueError, match='shape mismatches') as info:
        AdapterCheckpointHook().after_load_checkpoint(runner, checkpoint)
    assert 'decode_head.conv' in str(info.value) and path in str(info.value)
    # load_adapter_file gives the same refusal.
    with pytest.raises(ValueError, match='shape mismatches'):
        load_adapter_file(MODELS.build(other), path)


def test_a_nested_module_with_base_weights_completes_its_own_part(tmp_path, official_sam):
    from mmseg_naslora.checkpoint.adapter_file import complete_from_base
    _, sam_path = official_sam
    backbone = model_cfg(sam_path)['backbone']

    class Outer(torch.nn.Module):
        """A module with base weights (none of its own frozen) around the SAM encoder."""

        def __init__(self):
            super().__init__()
            self.checkpoint = None
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.inner = MODELS.build(backbone)
            self.register_load_state_dict_pre_hook(complete_from_base)

    trained = Outer()
    trained.inner.init_weights()
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    path = save_adapters(str(tmp_path / 'a.safetensors'), adapter_state_dict(trained),
                         dict(backbone=backbone))
    fresh = Outer()
    fresh.load_state_dict(adapter_file_state_dict(path), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())

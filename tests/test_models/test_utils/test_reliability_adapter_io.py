"""Adapter-only safetensors files: round trip, base checks, safe and atomic I/O."""
import json
import os
import os.path as osp

import pytest
import torch
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW, build_official_sam
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader)
from mmseg_naslora.engine import atomic_io
from mmseg_naslora.models.utils import adapter_io
from mmseg_naslora.models.utils.adapter_io import (adapter_state_dict, load_adapters,
                                                   read_adapters, save_adapters,
                                                   sha256_file, trainable_state_keys)


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
                      adapter=adapter or dict(type='LoRA', rank=3, alpha=32)),
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
    assert json.loads(meta['adapter']) == {'alpha': 32, 'rank': 3, 'type': 'LoRA'}
    # The file is a small fraction of the model.
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert osp.getsize(path) < 0.5 * full
    fresh = MODELS.build(cfg)
    fresh.init_weights()
    load_adapters(fresh, path, cfg)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, mode='tensor'), fresh.eval()(x, mode='tensor'))


def test_nas_adapter_file_keeps_alpha_and_bn_statistics(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path, adapter=dict(type='NASLoRA', rank=3, alpha=32,
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
        load_adapters(model, path, cfg_other)
    assert 'a.safetensors' in str(info.value) and 'strict=False' in str(info.value)
    # strict=False loads anyway (with a warning).
    load_adapters(model, path, cfg_other, strict=False)
    tensors, _ = read_adapters(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())


def test_other_adapter_or_arch_is_refused(tmp_path, official_sam):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    cfg_rank = model_cfg(sam_path, adapter=dict(type='LoRA', rank=4, alpha=32))
    model = MODELS.build(cfg_rank)
    with pytest.raises(ValueError, match='model.backbone.adapter') as info:
        load_adapters(model, path, cfg_rank)
    assert '"rank": 3' in str(info.value) and '"rank": 4' in str(info.value)
    # Shapes that cannot fit are refused even with strict=False.
    with pytest.raises(ValueError, match='shape mismatches'):
        load_adapters(model, path, cfg_rank, strict=False)


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
    assert ckpt['meta']['adapter_metadata']['format'] == adapter_io.FORMAT
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

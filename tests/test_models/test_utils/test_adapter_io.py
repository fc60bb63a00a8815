"""Adapter files: tensor checksum, damaged files named, configs compared by meaning."""
import json
import logging

import pytest
import torch
from mmseg.registry import MODELS
from test_reliability_adapter_io import hash_cache, model_cfg, trained_model  # noqa: F401

import mmseg_naslora  # noqa: F401
from mmseg_naslora.models.utils import adapter_io
from mmseg_naslora.models.utils.adapter_io import (CHECKSUM_KEY, adapter_state_dict,
                                                   build_metadata, description_diff,
                                                   describe_model, load_adapters, read_adapters,
                                                   save_adapters)


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
    assert meta[CHECKSUM_KEY] == adapter_io.tensors_checksum(tensors)
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
    monkeypatch.setattr(adapter_io, 'print_log',
                        lambda msg, **kw: warnings.append((msg, kw.get('level'))))
    loaded, meta = read_adapters(path)
    assert CHECKSUM_KEY not in meta and loaded.keys() == tensors.keys()
    assert any('cannot be verified' in m and path in m and lvl == logging.WARNING
               for m, lvl in warnings)


@pytest.mark.parametrize('written', [
    dict(type='LoRA', rank=3, alpha=32.0),
    dict(type='LoRA', rank=3.0, alpha=32, dropout=0.0),
    dict(type='LoRA', rank=3, alpha=32, dropout=0),
])
def test_same_adapter_config_written_differently_is_accepted(tmp_path, official_sam, written):
    _, sam_path = official_sam
    cfg = model_cfg(sam_path)
    path = save_adapters(str(tmp_path / 'a.safetensors'),
                         adapter_state_dict(trained_model(cfg)), cfg)
    other = model_cfg(sam_path, adapter=written)
    model = MODELS.build(other)
    model.init_weights()
    load_adapters(model, path, other)  # strict: must not be refused
    assert description_diff(describe_model(cfg), describe_model(other)) == []


def test_different_adapter_config_is_still_refused(official_sam):
    _, sam_path = official_sam
    ours = describe_model(model_cfg(sam_path))
    for changed in (dict(type='LoRA', rank=3, alpha=16), dict(type='LoRA', rank=3, alpha=32,
                                                              dropout=0.1),
                    dict(type='ConvLoRA', rank=3, alpha=32)):
        assert description_diff(ours, describe_model(model_cfg(sam_path, adapter=changed))) \
            == ['adapter']
    # Old records keep loading: text that is not JSON is compared as text.
    assert description_diff(dict(ours, arch='not json'), ours) == ['arch']
    assert json.loads(ours['adapter']) == {'alpha': 32, 'rank': 3, 'type': 'LoRA'}


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

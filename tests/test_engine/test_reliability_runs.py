"""Reliability of training runs: adapter files, NaN stop, resume checks, crash-safe saves."""
import glob
import os.path as osp

import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.models.utils.adapter_io import read_adapters


def make_cfg(tmp_path, data_root, sam_path, name='run', max_iters=2, extra='', **kw):
    path = tiny_config(str(tmp_path / f'{name}.py'), data_root, checkpoint=sam_path,
                       max_iters=max_iters, extra=extra, **kw)
    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path / name)
    add_reliability_hooks(cfg)
    return cfg


def outputs_written(work_dir):
    return sorted(glob.glob(osp.join(work_dir, '*.pth'))
                  + glob.glob(osp.join(work_dir, '*.safetensors'))
                  + glob.glob(osp.join(work_dir, 'last_checkpoint')))


def test_adapter_file_written_and_reproducible(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    files = []
    for name in ('a', 'b'):
        cfg = make_cfg(tmp_path, binary_dataset, sam_path, name=name)
        Runner.from_cfg(cfg).train()
        files.append(osp.join(cfg.work_dir, 'adapters.safetensors'))
    (ta, meta), (tb, _) = read_adapters(files[0]), read_adapters(files[1])
    assert any('lora_A' in k for k in ta) and any('decode_head' in k for k in ta)
    assert not any('base_layer' in k or 'patch_embed' in k for k in ta)
    assert meta['backbone'] == '"SAMViT"' and '"LoRA"' in meta['adapter']
    assert sam_path in meta['base_sha256']
    # Same seed, same data: identical adapter weights.
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    full = torch.load(osp.join(osp.dirname(files[0]), 'iter_2.pth'), weights_only=False)
    for k, v in ta.items():
        assert torch.equal(full['state_dict'][k], v)
    assert full['meta']['adapter_cfg']['adapter'] == meta['adapter']


def test_nonfinite_loss_stops_before_checkpoint(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=4)
    runner = Runner.from_cfg(cfg)
    head = runner.model.decode_head
    original = head.loss_by_feat

    def loss_by_feat(*args, **kwargs):
        losses = original(*args, **kwargs)
        if runner.iter >= 2:  # iterations 1-2 are fine, iteration 3 diverges
            losses['loss_ce'] = losses['loss_ce'] * float('nan')
        return losses
    head.loss_by_feat = loss_by_feat
    good = osp.join(cfg.work_dir, 'iter_2.pth')
    with pytest.raises(FloatingPointError, match='non-finite loss at iteration 3') as info:
        runner.train()
    assert 'iter_2.pth' in str(info.value) and 'decode.loss_ce=nan' in str(info.value)
    assert outputs_written(cfg.work_dir)[:2] == [
        osp.join(cfg.work_dir, 'adapters.safetensors'), good]
    state = torch.load(good, weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_with_another_adapter_is_refused(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path)
    Runner.from_cfg(cfg).train()
    before = outputs_written(cfg.work_dir)
    cfg2 = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=4)
    cfg2.model.backbone.adapter = dict(type='NASLoRA', rank=3, alpha=32, op_variant='darts')
    cfg2.work_dir, cfg2.resume = cfg.work_dir, True
    with pytest.raises(ValueError, match='cannot resume from this checkpoint') as info:
        Runner.from_cfg(cfg2).train()
    for culprit in ('model.backbone.adapter', 'NASLoRA', '"LoRA"', '--work-dir', cfg.work_dir):
        assert culprit in str(info.value)
    assert outputs_written(cfg.work_dir) == before


def test_adapter_file_onto_base_reproduces_outputs(tmp_path, binary_dataset, official_sam):
    from mmseg.registry import MODELS
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path)
    trained = Runner.from_cfg(cfg)
    trained.train()
    model = trained.model.eval()
    cfg_test = make_cfg(tmp_path, binary_dataset, sam_path, name='test')
    cfg_test.load_from = osp.join(cfg.work_dir, 'adapters.safetensors')
    tester = Runner.from_cfg(cfg_test)
    tester.test()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x, mode='tensor'), tester.model.eval()(x, mode='tensor'),
                              atol=1e-6)
        fresh = MODELS.build(cfg_test.model).eval()
        fresh.init_weights()
        assert not torch.allclose(model(x, mode='tensor'), fresh(x, mode='tensor'), atol=1e-4)


def test_kill_during_checkpoint_save_keeps_previous(tmp_path, binary_dataset, official_sam,
                                                    monkeypatch):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=4)
    runner = Runner.from_cfg(cfg)
    real_save = torch.save
    calls = []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: write half, then die
            real_save(obj, f, *args, **kwargs)
            f.truncate(f.tell() // 2)
            raise KeyboardInterrupt('killed during save')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    monkeypatch.undo()
    names = [osp.basename(p) for p in outputs_written(cfg.work_dir)]
    assert names == ['adapters.safetensors', 'iter_2.pth', 'last_checkpoint']
    assert not glob.glob(osp.join(cfg.work_dir, '.*tmp*'))
    ckpt = torch.load(osp.join(cfg.work_dir, 'iter_2.pth'), weights_only=False)
    assert ckpt['meta']['iter'] == 2
    read_adapters(osp.join(cfg.work_dir, 'adapters.safetensors'))


def test_reliability_hooks_defaults_and_overrides():
    cfg = Config(dict(default_hooks=dict(adapter_checkpoint=dict(strict=False),
                                         nonfinite_loss=None)))
    add_reliability_hooks(cfg)
    hooks = cfg.default_hooks
    assert hooks.adapter_checkpoint == dict(type='AdapterCheckpointHook', strict=False)
    assert 'nonfinite_loss' not in hooks
    assert hooks.startup_check.type == 'StartupCheckHook'
    cfg = Config(dict())
    add_reliability_hooks(cfg)
    assert set(cfg.default_hooks) == {'startup_check', 'nonfinite_loss', 'adapter_checkpoint'}

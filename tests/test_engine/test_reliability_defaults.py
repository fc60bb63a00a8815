"""The hooks ``add_reliability_hooks`` adds, in real runs: adapter files, NaN stop,
resume checks, lr on resume, saves."""
import builtins
import glob
import io
import os.path as osp

import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.checkpoint.adapter_file import read_adapters
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks


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


def poison_loss_from(runner, iteration):
    """Make every loss from ``iteration`` (1-based) on NaN."""
    head = runner.model.decode_head
    original = head.loss_by_feat

    def loss_by_feat(*args, **kwargs):
        losses = original(*args, **kwargs)
        if runner.iter + 1 >= iteration:
            losses['loss_ce'] = losses['loss_ce'] * float('nan')
        return losses
    head.loss_by_feat = loss_by_feat


def test_nonfinite_loss_stops_before_checkpoint(tmp_path, binary_dataset, official_sam):
    """NaN at iteration 5: iter_4.pth holds the weights that gave it; iter_2.pth is good."""
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=6)
    runner = Runner.from_cfg(cfg)
    poison_loss_from(runner, 5)
    good, suspect = (osp.join(cfg.work_dir, f'iter_{i}.pth') for i in (2, 4))
    with pytest.raises(FloatingPointError, match='non-finite loss at iteration 5') as info:
        runner.train()
    msg = str(info.value)
    assert 'decode.loss_ce=nan' in msg
    assert f'still gave a finite loss is {good}' in msg
    assert f'--resume --cfg-options load_from={good}' in msg
    assert f'Do not use {suspect}' in msg and 'ResumeLrHook' in msg
    assert [osp.basename(p) for p in outputs_written(cfg.work_dir)] == [
        'adapters.safetensors', 'iter_2.pth', 'iter_4.pth', 'last_checkpoint']
    state = torch.load(good, weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nonfinite_loss_right_after_a_save_names_no_good_checkpoint(tmp_path, binary_dataset,
                                                                    official_sam):
    """NaN at iteration 3: iter_2.pth was saved after the diverging update, never 'good'."""
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=4)
    runner = Runner.from_cfg(cfg)
    poison_loss_from(runner, 3)
    with pytest.raises(FloatingPointError, match='non-finite loss at iteration 3') as info:
        runner.train()
    msg = str(info.value)
    assert 'No checkpoint is known to be good' in msg
    assert osp.join(cfg.work_dir, 'iter_2.pth') + ' was saved after the diverging update' in msg
    assert 'last good checkpoint' not in msg and 'finite loss is' not in msg


def lr_after(runner):
    return runner.optim_wrapper.get_lr()['lr'][0]


@pytest.mark.parametrize('schedule', [
    '', "param_scheduler = [dict(type='PolyLR', eta_min=0, power=1.0, begin=0, end=8, "
        'by_epoch=False)]'], ids=['constant', 'poly'])
def test_lower_lr_on_resume_takes_effect(tmp_path, binary_dataset, official_sam, schedule):
    """The NaN advice works: a lower lr in the config replaces the checkpoint's on resume."""
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=2, extra=schedule)
    Runner.from_cfg(cfg).train()
    resumed = make_cfg(tmp_path, binary_dataset, sam_path, name='resumed', max_iters=4,
                       extra=schedule)
    resumed.work_dir, resumed.resume = cfg.work_dir, True
    resumed.optim_wrapper.optimizer.lr = 1e-4
    runner = Runner.from_cfg(resumed)
    runner.train()
    # A run started with lr 1e-4 has the same lr at iteration 4 (same schedule position).
    scratch = make_cfg(tmp_path, binary_dataset, sam_path, name='scratch', max_iters=4,
                       extra=schedule)
    scratch.optim_wrapper.optimizer.lr = 1e-4
    reference = Runner.from_cfg(scratch)
    reference.train()
    assert lr_after(runner) == pytest.approx(lr_after(reference), rel=1e-6)
    assert lr_after(runner) < 5e-4


def test_resume_with_another_adapter_is_refused(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path)
    Runner.from_cfg(cfg).train()
    before = outputs_written(cfg.work_dir)
    cfg2 = make_cfg(tmp_path, binary_dataset, sam_path, max_iters=4)
    cfg2.model.backbone.adapter = dict(type='NASLoRA', rank=3, lora_alpha=32, op_variant='darts')
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
    real_open = builtins.open

    class DyingFile(io.FileIO):
        def write(self, data):  # write half of the second checkpoint, then die
            super().write(bytes(data)[:len(data) // 2])
            raise KeyboardInterrupt('killed during save')

    def dying_open(file, mode='r', *args, **kwargs):
        if 'iter_4.pth' in str(file) and 'w' in mode:
            return DyingFile(file, 'w')
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, 'open', dying_open)
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
    assert set(cfg.default_hooks) == {'work_dir_guard', 'startup_check', 'nonfinite_loss',
                                      'adapter_checkpoint', 'resume_lr', 'checkpoint'}
    # mmengine's default checkpoint hook, made atomic; a remote or chosen backend is kept.
    assert cfg.default_hooks.checkpoint == dict(type='CheckpointHook', interval=1,
                                                backend_args=dict(backend='atomic_local'))
    for own in (dict(type='CheckpointHook', out_dir='s3://bucket/run'),
                dict(type='CheckpointHook', backend_args=dict(backend='local'))):
        cfg = Config(dict(default_hooks=dict(checkpoint=own)))
        add_reliability_hooks(cfg)
        assert cfg.default_hooks.checkpoint == own
    # A schedule's atomic backend is dropped for a remote out_dir or file_client_args.
    schedule = dict(type='CheckpointHook', backend_args=dict(backend='atomic_local'))
    for change in (dict(out_dir='s3://bucket/run'), dict(file_client_args=dict(backend='disk'))):
        cfg = Config(dict(default_hooks=dict(checkpoint=dict(schedule, **change))))
        add_reliability_hooks(cfg)
        assert cfg.default_hooks.checkpoint == dict(schedule, backend_args=None, **change)

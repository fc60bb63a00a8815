import pytest
from mmengine.config import Config

from mmseg_naslora.utils.cli import enable_amp, set_data_root


def test_set_data_root_follows_wrapped_datasets(tmp_path):
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='ConcatDataset', datasets=[
            dict(type='A', data_root='a'), dict(type='RepeatDataset', dataset=dict(data_root='b'))
        ])),
        val_dataloader=dict(dataset=dict(data_root='c'))))
    set_data_root(cfg, str(tmp_path))
    ds = cfg.train_dataloader.dataset.datasets
    assert ds[0].data_root == ds[1].dataset.data_root == str(tmp_path)
    assert cfg.val_dataloader.dataset.data_root == str(tmp_path)


def test_set_data_root_rejects_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope'):
        set_data_root(Config(dict(val_dataloader=dict(dataset=dict()))), str(tmp_path / 'nope'))


def test_amp_refuses_without_cuda(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='CUDA'):
        enable_amp(Config(dict(optim_wrapper=dict(type='OptimWrapper'))))


def test_amp_switches_wrapper_with_cuda(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper')))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'

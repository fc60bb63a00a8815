"""alpha_data='split' through a real epoch-based Runner: short last batches train."""
import uuid

import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.models.adapters.arch import is_arch_name
from mmseg_naslora.utils.model import unwrap_model

NAS_BASE = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'


def test_split_search_survives_the_short_last_batch(tmp_path, binary_dataset, official_sam):
    # Issue 15: 5 samples at batch 2 end each epoch with a batch of 1, which crashed the
    # first search epoch ("raise train_dataloader.batch_size", already 2).
    _, sam_path = official_sam
    cfg = Config.fromfile(tiny_config(str(tmp_path / 'cfg.py'), binary_dataset,
                                      base=NAS_BASE, checkpoint=sam_path))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'vis_{uuid.uuid4().hex}'
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    cfg.optim_wrapper.pop('optimizer')  # tiny_config's plain-optimizer lr
    cfg.model.update(alpha_data='split', search_step='alternate')
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=True)
    cfg.train_dataloader.dataset.indices = 5
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=100)
    cfg.custom_hooks = [dict(type='NASStageHook', warmup=0, by_epoch=True)]
    runner = Runner.from_cfg(cfg)
    model = unwrap_model(runner.model)
    batch_sizes = []
    train_step = model.train_step

    def record(data, optim_wrapper, *args, **kwargs):
        batch_sizes.append(len(data['inputs']))
        return train_step(data, optim_wrapper, *args, **kwargs)

    model.train_step = record
    alpha0 = [p.detach().clone() for n, p in model.named_parameters() if is_arch_name(n)]
    runner.train()
    assert batch_sizes == [2, 2, 1] * 2 and runner.iter == 6
    alpha = [p.detach() for n, p in model.named_parameters() if is_arch_name(n)]
    assert any(not torch.equal(a, b) for a, b in zip(alpha0, alpha))  # α was searched

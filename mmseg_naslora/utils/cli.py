"""Config edits shared by the command-line tools."""
import logging
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.logging import print_log


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every train/val/test dataset of ``cfg`` at ``data_root``.

    Wrapped datasets (``ConcatDataset``'s ``datasets``, ``RepeatDataset``'s
    ``dataset``) are followed, so one flag serves any config.
    """
    if not osp.isdir(data_root):
        raise FileNotFoundError(f'--data-root {data_root!r} is not a directory.')

    def visit(dataset_cfg) -> int:
        if dataset_cfg is None:
            return 0
        if 'datasets' in dataset_cfg:
            return sum(visit(d) for d in dataset_cfg['datasets'])
        if 'dataset' in dataset_cfg:
            return visit(dataset_cfg['dataset'])
        dataset_cfg['data_root'] = data_root
        return 1

    changed = sum(visit(cfg.get(f'{split}_dataloader', {}).get('dataset'))
                  for split in ('train', 'val', 'test'))
    if not changed:
        raise KeyError('--data-root: the config defines no train/val/test dataloader.')


def enable_amp(cfg: Config) -> None:
    """Switch the config to bf16/fp16 mixed precision, or refuse clearly."""
    if not torch.cuda.is_available():
        raise SystemExit(
            '--amp needs a CUDA device: mmengine\'s AmpOptimWrapper does not run on the '
            'CPU. Drop --amp to train in fp32 here.')
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.',
                  logger='current', level=logging.WARNING)
        return
    if wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise SystemExit(f'--amp supports optim_wrapper.type=OptimWrapper, got {wrapper.type}.')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.loss_scale = 'dynamic'

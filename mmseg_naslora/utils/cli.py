"""Arguments and config edits shared by the command-line tools."""
import argparse
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every tool takes after its positional ones (mmseg's names)."""
    parser.add_argument('--work-dir', help='the dir to save logs, results and models')
    parser.add_argument('--data-root', help='override the data_root of every dataset')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load .pth training checkpoints with full pickle (runs code '
                        'stored in the file): only for files you trust; by default they '
                        'load with weights_only=True and the types mmengine writes')


def apply_trust_checkpoint(args: argparse.Namespace) -> None:
    """``--trust-checkpoint``: opt in to full unpickling for this process (and its ranks)."""
    if getattr(args, 'trust_checkpoint', False):
        from mmseg_naslora.engine.checkpoint_loader import TRUST_ENV
        os.environ[TRUST_ENV] = '1'


def load_config(args: argparse.Namespace) -> Config:
    """Read ``args.config`` and apply the common arguments to it."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    apply_trust_checkpoint(args)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


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
    """Switch the config to mixed precision (bf16 where the GPU has it), or refuse clearly.

    Both config shapes are handled: a plain ``optim_wrapper=dict(type=...,
    optimizer=...)`` and the NAS form ``optim_wrapper=dict(constructor=
    'NASOptimWrapperConstructor', weights=..., alpha=...)``, whose top-level
    wrapper keys apply to both entries and win over theirs (see
    :class:`NASOptimWrapperConstructor`), so setting them once switches both
    optimisers. The autocast dtype is bf16 when the GPU supports it (no
    overflow, so the dynamic loss scale never has to back off) and fp16
    otherwise; ``loss_scale='dynamic'`` serves both.
    """
    if not torch.cuda.is_available():
        raise SystemExit(
            '--amp needs a CUDA device: mmengine\'s AmpOptimWrapper does not run on the '
            'CPU. Drop --amp to train in fp32 here.')
    wrapper = cfg.optim_wrapper
    constructor = str(wrapper.get('constructor', '')).split('.')[-1]
    if constructor == 'NASOptimWrapperConstructor':
        types = {key: wrapper[key].get('type', 'OptimWrapper')
                 for key in ('weights', 'alpha') if isinstance(wrapper.get(key), dict)}
        if 'type' in wrapper:
            types = {'(top level)': wrapper.type}
    else:
        types = {'(top level)': wrapper.get('type', 'OptimWrapper')}
    if set(types.values()) == {'AmpOptimWrapper'}:
        print_log('AMP training is already enabled in your config.',
                  logger='current', level=logging.WARNING)
        return
    unsupported = {k: v for k, v in types.items()
                   if v not in ('OptimWrapper', 'AmpOptimWrapper')}
    if unsupported:
        where = ', '.join(f'optim_wrapper{"" if k.startswith("(") else "." + k}.type={v!r}'
                          for k, v in unsupported.items())
        raise SystemExit(f'--amp supports optim_wrapper type OptimWrapper, got {where}; '
                         "set it to 'OptimWrapper' or drop --amp.")
    wrapper.type = 'AmpOptimWrapper'
    wrapper.loss_scale = 'dynamic'
    if _cuda_bf16_supported():
        wrapper.dtype = 'bfloat16'


def _cuda_bf16_supported() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):  # no usable CUDA device after all
        return False


def init_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Start a gloo process group for torchrun on a machine without CUDA.

    mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
    unconditionally and its DDP wrapper always passes ``device_ids``, so
    multi-process CPU runs (tests, debugging) would fail there. A group
    initialised here is reused by the runner, and the default wrapper becomes
    :class:`NASDistributedDataParallel`, which drops ``device_ids`` on the CPU
    and trains any other segmentor as mmengine's DDP does.
    """
    import torch.distributed as dist
    if launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.setdefault('model_wrapper_cfg', dict(type='mmseg.NASDistributedDataParallel'))
    dist.init_process_group(backend='gloo')

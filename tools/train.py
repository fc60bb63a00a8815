"""Train a segmentor: ``python tools/train.py CONFIG [--work-dir DIR] [--resume]``."""
import argparse

import torch
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader fix)
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.utils.cli import (add_common_args, enable_amp, init_cpu_distributed,
                                     load_config)
from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work_dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (needs CUDA)')
    add_common_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        tune_cpu_allocator()
    cfg = load_config(args)
    if args.amp:
        enable_amp(cfg)
    cfg.resume = args.resume
    add_reliability_hooks(cfg)
    init_cpu_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    # gloo/NCCL threads still running at interpreter exit abort the process
    # (SIGABRT, "terminate called without an active exception") after a good run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()

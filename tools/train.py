"""Train a segmentor: ``python tools/train.py CONFIG [--work-dir DIR] [--resume]``.

The work dir belongs to one run at a time (a lock on ``WORK_DIR/.lock``);
``--resume`` continues from the newest checkpoint in the work dir itself and
refuses when there is none; a new run into a work dir holding checkpoints is
refused unless ``--overwrite`` (see :mod:`mmseg_naslora.engine.work_dir`).
"""
import argparse

import torch
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader fix)
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.engine.work_dir import WorkDirError, prepare_train_work_dir
from mmseg_naslora.utils.cli import (DistributedSession, add_common_args, enable_amp,
                                     load_config)
from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the newest checkpoint in the work_dir '
                        '(or from load_from, if the config sets it)')
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in a work_dir that holds checkpoints of an '
                        'earlier run, replacing them')
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
    if args.overwrite and 'work_dir_guard' in cfg.default_hooks:
        cfg.default_hooks.work_dir_guard.overwrite = True
    # Before the runner exists, so a refused run writes nothing into the work dir
    # (the runner would dump its config and start a log there).
    try:
        resume_from = prepare_train_work_dir(cfg.work_dir, resume=args.resume,
                                             load_from=cfg.get('load_from'),
                                             overwrite=args.overwrite)
    except WorkDirError as err:
        raise SystemExit(f'tools/train.py: {err}') from None
    if resume_from is not None:
        print(f'--resume: resuming from {resume_from}, the newest checkpoint in '
              f'{cfg.work_dir}', flush=True)
        cfg.load_from = resume_from  # mmengine resumes from load_from when set
    # The session shuts the workers and the process group down, also on error:
    # left to interpreter exit they abort it (SIGABRT) after a good run.
    with DistributedSession(cfg, args.launcher) as session:
        session.runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg \
            else RUNNERS.build(cfg)
        session.runner.train()


if __name__ == '__main__':
    main()

"""Test (and evaluate) a checkpoint: ``python tools/test.py CONFIG CHECKPOINT``.

CHECKPOINT is a training checkpoint (``.pth``), an adapter-only file
(``adapters.safetensors``), which is loaded onto the config's base SAM weights,
or a work dir, whose newest checkpoint is tested. ``.pth`` files load with
``weights_only=True`` and the allow-list of the types mmengine writes
(``--trust-checkpoint`` opts in to full pickle for a trusted file).
"""
import argparse
import glob
import os.path as osp

import torch
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader fix)
from mmseg_naslora.checkpoint.adapter_file import FORMAT, read_safetensors_metadata
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.engine.work_dir import find_latest_checkpoint
from mmseg_naslora.utils.cli import (DistributedSession, add_common_args, apply_tta,
                                     load_config)
from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator

# Metrics that can write their predicted masks with output_dir/keep_results.
MASK_WRITERS = ('IoUMetric', 'ForegroundIoUMetric')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint (.pth), adapter file (.safetensors) '
                        'or a work dir (its newest checkpoint)')
    parser.add_argument('--out', help='directory to save predicted masks for offline evaluation')
    parser.add_argument('--show-dir', help='directory where painted predictions are saved')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_common_args(parser)
    return parser.parse_args()


def _adapter_format(path: str) -> str:
    """The ``format`` of a safetensors file; a damaged one is skipped with a message."""
    try:
        return read_safetensors_metadata(path).get('format', '')
    except ValueError as error:
        print(f'tools/test.py: skipping {path}: {error}', flush=True)
        return ''


def resolve_checkpoint(path: str) -> str:
    """``path`` itself, or the newest checkpoint of the work dir ``path``.

    A folder without ``iter_*.pth``/``epoch_*.pth`` falls back to its adapter
    file: ``adapters.safetensors``, or the one adapter file it holds under
    another name (several are refused, listed).
    """
    if not osp.isdir(path):
        if not osp.isfile(path):
            raise SystemExit(f'checkpoint {path!r} does not exist.')
        return path
    found = find_latest_checkpoint(path)
    if found is None:
        adapters = [p for p in sorted(glob.glob(osp.join(path, '*.safetensors')))
                    if _adapter_format(p) == FORMAT]
        default = osp.join(path, 'adapters.safetensors')
        if default in adapters or len(adapters) == 1:
            found = default if default in adapters else adapters[0]
        elif adapters:
            raise SystemExit(
                f'checkpoint {path!r} is a directory with several adapter files '
                f'({", ".join(osp.basename(p) for p in adapters)}) and no training '
                'checkpoint; pass the one to test.')
    if found is None:
        raise SystemExit(
            f'checkpoint {path!r} is a directory without checkpoints (no iter_*.pth, '
            'epoch_*.pth, last_checkpoint or adapter file in it); pass a checkpoint file, '
            'e.g. WORK_DIR/iter_N.pth, or the work dir of a run that saved one.')
    print(f'tools/test.py: {path} is a directory; testing its newest checkpoint {found}',
          flush=True)
    return found


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        tune_cpu_allocator()
    cfg = load_config(args)
    cfg.load_from = resolve_checkpoint(args.checkpoint)
    add_reliability_hooks(cfg)
    if args.show_dir:  # every test image, not mmseg's default of one in 50
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
    if args.tta:  # refuses configs without a fitting tta_pipeline
        apply_tta(cfg, args.config)
    if args.out is not None:
        evaluators = cfg.test_evaluator
        writers = [e for e in (evaluators if isinstance(evaluators, list) else [evaluators])
                   if e['type'] in MASK_WRITERS]
        if not writers:
            raise SystemExit(f'--out needs one of {MASK_WRITERS} in test_evaluator.')
        for evaluator in writers:
            evaluator.update(output_dir=args.out, keep_results=True)
    # The session shuts the workers and the process group down, also on error:
    # left to interpreter exit they abort it (SIGABRT) after a good run.
    with DistributedSession(cfg, args.launcher) as session:
        session.runner = Runner.from_cfg(cfg)
        session.runner.test()


if __name__ == '__main__':
    main()

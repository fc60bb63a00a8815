"""Arguments and config edits shared by the command-line tools."""
import argparse
import copy
import gc
import logging
import os
import os.path as osp
import weakref
from types import TracebackType
from typing import Any, Optional, Type

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
        from mmseg_naslora.checkpoint.safe_load import TRUST_ENV
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


#: Metrics that read the per-pixel scores ``seg_logits``: only
#: :class:`~mmseg_naslora.models.segmentors.ProbTTAModel` merges those (mmseg's
#: ``SegTTAModel`` leaves the last view's), so under another TTA model their
#: numbers would silently be one view's.
SCORE_METRICS = ('AUCMetric', 'SODMetric')


def _flat_transforms(pipeline) -> list:
    """Every transform of ``pipeline``, ``TestTimeAug``'s options included."""
    flat = []
    for transform in pipeline:
        if transform.get('type') == 'TestTimeAug':
            for options in transform.get('transforms', []):
                flat.extend(options)
        else:
            flat.append(transform)
    return flat


def apply_tta(cfg: Config, config_path: str) -> None:
    """``--tta``: test through ``cfg.tta_model`` and ``cfg.tta_pipeline``, or refuse clearly.

    Refused (``SystemExit`` naming the config and the fix) when the config has
    no ``tta_pipeline`` (it used to be an ``AttributeError``), when its
    ``tta_pipeline`` lacks a transform of ``test_dataloader.dataset.pipeline``
    (e.g. a config that overrides ``test_pipeline`` with another resize but
    inherits its dataset base's ``tta_pipeline``: TTA would test at another
    scale than the plain test), and when ``test_evaluator`` has a metric that
    reads ``seg_logits`` (:data:`SCORE_METRICS`, ``BERMetric(source='score')``)
    and the TTA model is not :class:`ProbTTAModel`, the one that merges them.
    A missing ``tta_model``, and mmseg's ``SegTTAModel`` (whose merge is wrong
    for binary heads, see :class:`ProbTTAModel`), become ``ProbTTAModel``.

    Args:
        cfg (Config): The test config, edited in place.
        config_path (str): Its file, for the messages.
    """
    if cfg.get('tta_pipeline') is None:
        raise SystemExit(
            f'--tta: {config_path} defines no tta_pipeline (the test pipeline of the '
            'test-time augmentation); add one to the config (see '
            'configs/_base_/datasets/kvasir_seg.py), or drop --tta.')
    test_pipeline = cfg.test_dataloader.dataset.get('pipeline') or []
    tta = _flat_transforms(cfg.tta_pipeline)
    missing = [t for t in test_pipeline if t not in tta]
    if missing:
        shown = '; '.join(str(dict(t)) for t in missing)
        raise SystemExit(
            f'--tta: the tta_pipeline of {config_path} does not match its '
            f'test_dataloader.dataset.pipeline, which has {shown} that the tta_pipeline lacks '
            '(a config that overrides test_pipeline inherits the tta_pipeline of its dataset '
            'base unchanged); define tta_pipeline next to test_pipeline in the config with the '
            'same transforms plus the flips, or drop --tta.')
    tta_model = copy.deepcopy(cfg.get('tta_model') or dict(type='ProbTTAModel'))
    if str(tta_model.get('type')).split('.')[-1] == 'SegTTAModel':
        print_log(f'--tta: {config_path} names mmseg\'s SegTTAModel, which applies a sigmoid '
                  'to the binary heads\' probabilities a second time and keeps one view\'s '
                  'scores; testing with ProbTTAModel, which averages the probabilities.',
                  logger='current', level=logging.WARNING)
        tta_model['type'] = 'ProbTTAModel'
    merges_scores = str(tta_model.get('type')).split('.')[-1] == 'ProbTTAModel'
    evaluators = cfg.get('test_evaluator') or []
    for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
        kind = str(evaluator.get('type', '')).split('.')[-1]
        scored = kind in SCORE_METRICS
        if kind == 'BERMetric':
            from mmseg.registry import METRICS
            scored = getattr(METRICS.build(evaluator), 'source', 'pred') == 'score'
        if scored and not merges_scores:
            raise SystemExit(
                f'--tta: test_evaluator {kind} of {config_path} reads the per-pixel scores '
                f'(seg_logits), which tta_model {tta_model["type"]} does not merge, so its TTA '
                'value would be that of one view; use tta_model = dict(type=\'ProbTTAModel\'), '
                'drop --tta, or use a test_evaluator of mask metrics only (e.g. '
                'ForegroundIoUMetric).')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    tta_model['module'] = cfg.model
    cfg.model = tta_model


class DistributedSession:
    """Start the CPU process group of a tool and shut everything down in ``__exit__``.

    The tool stores its runner in :attr:`runner`; ``__exit__`` runs on success
    and on error (a ``try``/``finally``), so no tool leaves at interpreter exit
    anything that owns gloo/NCCL threads. Such threads outliving ``main``
    (a process group, or the DDP reducer holding it, destroyed by Python's
    finalisation in arbitrary order) abort the process after a good run:
    SIGABRT, ``terminate called without an active exception``. In order:

    1. the dataloader workers (``persistent_workers=True`` keeps them alive
       with their iterator) are shut down;
    2. the runner (model, DDP reducer, loops, dataloaders) is released and
       collected, so the last reference to the process group is the
       default-group registry;
    3. on success, a barrier, so no rank closes its gloo connections while a
       peer still talks to it (ranks finish the last save or the result
       collection at different times);
    4. ``destroy_process_group()``, which now runs the group's destructor (and
       joins its threads) here, in ``main``, not during finalisation.

    On error the barrier is skipped (the peers may never reach it) and the
    teardown never masks the original exception.

    Args:
        cfg (Config): The tool's config (:func:`init_cpu_distributed` edits it).
        launcher (str): ``--launcher``.
    """

    def __init__(self, cfg: Config, launcher: str) -> None:
        self.cfg = cfg
        self.launcher = launcher
        self.runner: Any = None

    def __enter__(self) -> 'DistributedSession':
        init_cpu_distributed(self.cfg, self.launcher)
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> bool:
        ok = exc_type is None
        try:
            model_ref = self._release_runner()
            _destroy_process_group(ok)
            if ok and model_ref is not None and model_ref() is not None:
                print_log('teardown: the model is still referenced after the run; its '
                          'process-group handles are freed at interpreter exit.',
                          logger='current', level=logging.DEBUG)
        except Exception as err:  # noqa: BLE001  never mask the run's own error
            if ok:
                raise
            print_log(f'teardown after the error failed too: {err!r}', logger='current',
                      level=logging.WARNING)
        return False

    def _release_runner(self) -> Optional[weakref.ref]:
        runner, self.runner = self.runner, None
        if runner is None:
            return None
        shutdown_dataloader_workers(runner)
        model = getattr(runner, 'model', None)
        model_ref = weakref.ref(model) if model is not None else None
        del runner, model
        gc.collect()  # loops and hooks reference the runner: free the cycles now
        return model_ref


def shutdown_dataloader_workers(runner: Any) -> None:
    """Stop the worker processes of every dataloader the runner built.

    ``persistent_workers=True`` keeps each ``DataLoader``'s iterator (and its
    workers) alive until the loader is collected; an iteration-based loop
    holds its own iterator. Both are shut down here, deterministically.
    """
    from torch.utils.data import DataLoader
    iterators = []
    # The raw attributes: the properties would build a loop that was never used.
    for name in ('_train_loop', '_val_loop', '_test_loop'):
        loop = getattr(runner, name, None)
        loader = getattr(loop, 'dataloader', None)
        if isinstance(loader, DataLoader):
            iterators.append(getattr(loader, '_iterator', None))
            loader._iterator = None
        wrapped = getattr(loop, 'dataloader_iterator', None)  # IterBasedTrainLoop's own
        iterators.append(getattr(wrapped, '_iterator', None))
    for iterator in iterators:
        shutdown = getattr(iterator, '_shutdown_workers', None)
        if shutdown is not None:
            shutdown()


def _destroy_process_group(ok: bool) -> None:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()

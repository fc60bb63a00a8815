"""Benchmark the fine-tuning methods on one SAM backbone: parameters, time, memory, FLOPs.

Every method is measured in its own subprocess (so that peak memory is its own)
with the project's real training path: ``NASEncoderDecoder.train_step`` and the
``OptimWrapperDict`` of ``NASOptimWrapperConstructor`` (a plain wrapper for
α-free models). Weights are random: the timings do not depend on them, and no
checkpoint is needed.

Examples::

    # the table of docs/benchmarks.md (CPU, 2 threads)
    python tools/benchmark.py --arch vit-b --size 512 --batch-size 1 \
        --steps 3 --warmup 1 --threads 2 --out work_dirs/bench_vit-b_512.json
    # GPU memory/time with bf16 autocast and activation checkpointing
    python tools/benchmark.py --arch vit-h --size 1024 --batch-size 1 --device cuda \
        --amp --with-cp --out bench_vit-h_cp.json
    # where one NAS-LoRA training step spends its time (torch.profiler)
    python tools/benchmark.py --arch vit-b --size 256 --profile nas_lora_s2
    # CI smoke test: a tiny random SAM, 1 warm-up step, 2 timed steps
    python tools/benchmark.py --quick --out /tmp/bench.json
    # GPU memory of one fp32 training step at any size, computed without a GPU
    # (fake tensors); --real-tensors runs the same accounting for real on the CPU
    python tools/benchmark.py --arch vit-h --size 1024 --batch-size 1 --with-cp \
        --fake-memory --out work_dirs/fakemem/vit-h_1024_cp.json

Columns (per method):

* trainable parameters (α counted separately as well);
* training step time: forward + backward + optimiser step(s), the median of
  ``--steps`` steps after ``--warmup`` (``torch.cuda.synchronize`` on CUDA).
  NAS-LoRA stage 1 is one weight step; stage 2 is one forward/backward and
  both optimiser steps (``search_step='joint'``), or an α step plus a weight
  step (``'alternate'``, the ``*_alt`` rows);
* peak training memory above the process baseline after the model, optimiser
  and batch exist: peak RSS (``resource.getrusage``) on the CPU,
  ``torch.cuda.max_memory_allocated`` on CUDA. It covers activations,
  gradients and optimiser state;
* inference latency (``mode='tensor'`` forward, no grad) before and after
  :func:`~mmseg_naslora.models.adapters.export.export_adapters` (LoRA folded,
  linear NAS cells collapsed, DARTS cells pruned to the top-k ops), with the
  largest output difference the export causes, each also as a ratio to the
  frozen model timed in turns with it in the same process;
* FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``:
  matmuls, convolutions and attention; element-wise ops are not counted) and
  the achieved FLOP/s next to a timed large matmul on the same device;
* every number's ratio to LoRA and to full fine-tuning from the same run.

``--fake-memory`` replaces all of that by an exact computation of the peak
tensor memory of one fp32 training step (see :func:`memory_step`): params,
buffers, gradients, optimiser state, activations and backward/optimiser
temporaries, in the 512-byte blocks of the CUDA caching allocator. SAM's
attention is the explicit ``softmax(q·kᵀ)`` of ``segment_anything`` (no
``scaled_dot_product_attention``), so the path is the one a GPU takes.
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: ``--arch`` presets: ``(backbone family, backbone arch, window size)``.
ARCHS = OrderedDict([
    ('vit-b', ('sam', 'b')),
    ('vit-l', ('sam', 'l')),
    ('vit-h', ('sam', 'h')),
    ('litemedsam', ('tinyvit', 'lite_medsam')),
    ('sam2-hiera-t', ('sam2', 'hiera-t')),
    ('sam2-hiera-s', ('sam2', 'hiera-s')),
    ('sam2-hiera-b+', ('sam2', 'hiera-b+')),
    ('sam2-hiera-l', ('sam2', 'hiera-l')),
    ('tiny', ('sam', None)),
    ('tiny-sam2', ('sam2', None)),
])
# The tiny test models of tests/conftest.py and tests/sam2_tiny.py.
TINY_SAM = dict(embed_dims=32, depth=2, num_heads=2, global_attn_indexes=(1, ))
TINY_HIERA = dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3, ),
                  window_spec=(4, 2, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4))
TINY_HEAD = dict(in_channels=32, channels=32, transformer_mlp_dim=64,
                 transformer_num_heads=2, iou_head_hidden_dim=32)

_NAS = dict(type='NASLoRA', rank=3, alpha=32)
_LINEAR_PRIMITIVES = ['none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                      'dil_conv_3x3', 'dil_conv_5x5']
#: name -> label, encoder adapter, encoder frozen, NAS stage, export mode.
METHODS = OrderedDict([
    ('frozen', dict(label='frozen encoder (decoder only)', adapter=None, freeze=True)),
    ('full', dict(label='full fine-tune (encoder unfrozen)', adapter=None, freeze=False)),
    ('lora', dict(label='LoRA r=3', adapter=dict(type='LoRA', rank=3, alpha=32),
                  export='fold')),
    ('conv_lora', dict(label='Conv-LoRA r=3', adapter=dict(type='ConvLoRA', rank=3, alpha=32))),
    ('nas_lora_s1', dict(label='NAS-LoRA r=3, stage 1 (weights)', adapter=_NAS,
                         stage='warmup', export='topk')),
    ('nas_lora_s2', dict(label='NAS-LoRA r=3, stage 2 (α + weights, joint step)', adapter=_NAS,
                         stage='search', export='topk')),
    ('nas_lora_s2_alt', dict(label='NAS-LoRA r=3, stage 2 (alternating step)', adapter=_NAS,
                             stage='search', search_step='alternate', export='topk')),
    ('nas_lora_linbn_s2', dict(label='NAS-LoRA linear+BN ops (collapsible), stage 2',
                               adapter=dict(_NAS, op_variant='linear_bn',
                                            primitives=_LINEAR_PRIMITIVES),
                               stage='search', export='collapse')),
    ('nas_pc_lora_s2', dict(label='NAS-PC-LoRA P=2/3, stage 2',
                            adapter=dict(type='NASPCLoRA', rank=3, alpha=32),
                            stage='search', export='topk')),
    # SAM2LoRA's defaults of configs/_base_/models/sam2_hiera-l_lora.py.
    ('sam2lora', dict(label='SAM2LoRA r=64 (enc+dec)',
                      adapter=dict(type='LoRA', rank=64, alpha=128, dropout=0.1),
                      decoder_adapter=dict(type='LoRA', rank=64, alpha=128, dropout=0.1),
                      sam2=True, export='fold')),
])
#: Metrics that get ``ratio_to_lora``/``ratio_to_full``.
RATIO_KEYS = ('trainable_params', 'train_step_ms', 'peak_train_mem_mb', 'infer_ms',
              'infer_export_ms', 'flops_per_step')
RANDOM_WEIGHTS_NOTE = ('random weights (no checkpoint): timings, memory and FLOPs do not '
                       'depend on the values; export differences are on random adapters')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='vit-b',
                        help=f'one of {list(ARCHS)} or a SAMViT arch dict as JSON, e.g. '
                        '\'{"embed_dims":384,"depth":6,"num_heads":6,'
                        '"global_attn_indexes":[5]}\'')
    parser.add_argument('--sam2-arch', default=None,
                        help='SAM2 arch of the sam2lora row when --arch is not a SAM2 one '
                        '(default: sam2-hiera-t; tiny-sam2 with --quick)')
    parser.add_argument('--size', type=int, default=512, help='square input side')
    parser.add_argument('--window-size', type=int, default=None,
                        help='SAMViT window (default 14; 2 for tiny/custom archs)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--steps', type=int, default=3, help='timed training steps')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps before them')
    parser.add_argument('--infer-steps', type=int, default=None,
                        help='timed inference runs (default: --steps)')
    parser.add_argument('--topk', type=int, default=2, help='ops kept by the DARTS export')
    parser.add_argument('--methods', nargs='+', default=None, choices=list(METHODS),
                        help='subset of methods (default: all; sam2lora needs sam2)')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast (CUDA: AmpOptimWrapper; CPU: torch.autocast)')
    parser.add_argument('--with-cp', action='store_true', help='activation checkpointing')
    parser.add_argument('--infer-only', action='store_true',
                        help='measure only inference latency and the export (no training step)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--quick', action='store_true',
                        help='tiny arch at 64x64, 1 warm-up, 2 steps (tests)')
    parser.add_argument('--out', help='write the JSON results here')
    parser.add_argument('--markdown', help='also write the markdown table here')
    parser.add_argument('--profile', metavar='METHOD', choices=list(METHODS),
                        help='profile one training step of METHOD instead (torch.profiler)')
    parser.add_argument('--fake-memory', action='store_true',
                        help='instead of timing: peak tensor memory of one training step '
                        'of each method under torch FakeTensorMode (no memory or compute '
                        'used, so any size fits), split into params/grads/optimizer/'
                        'activations, in 512-byte CUDA blocks; fp32 only')
    parser.add_argument('--real-tensors', action='store_true',
                        help='with --fake-memory: the same accounting on real CPU tensors '
                        '(runs the step for real), to cross-check the fake numbers')
    parser.add_argument('--worker', metavar='METHOD', help=argparse.SUPPRESS)
    parser.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.batch_size = 'tiny', 64, 2
        args.warmup, args.steps = 1, 2
        args.sam2_arch = args.sam2_arch or 'tiny-sam2'
    if args.infer_steps is None:
        args.infer_steps = args.steps
    if args.steps < 1 or args.warmup < 0:
        parser.error('--steps must be >= 1 and --warmup >= 0.')
    if args.real_tensors and not args.fake_memory:
        parser.error('--real-tensors only applies to --fake-memory.')
    if args.fake_memory and (args.amp or args.device != 'cpu' or args.profile):
        # Fake CUDA tensors cannot run a backward without a GPU (the autograd
        # engine needs a CUDA context), and CPU autocast keeps softmax and
        # layer_norm in bf16 where CUDA autocast runs them in fp32: a fake bf16
        # run on this path would not be the GPU's.
        parser.error('--fake-memory computes fp32 on fake CPU tensors: it does not combine '
                     'with --amp, --device cuda (measure there without it) or --profile.')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device here; use --device cpu.')
    return args


# Model ------------------------------------------------------------------------
def _arch_spec(arch: str, window: Optional[int]) -> Tuple[str, object, int]:
    """``(family, backbone arch, window)`` for an ``--arch`` value."""
    if arch in ARCHS:
        family, name = ARCHS[arch]
        if name is None:  # tiny presets
            return family, TINY_SAM if family == 'sam' else TINY_HIERA, window or 2
        return family, name, window or 14
    try:
        custom = json.loads(arch)
    except json.JSONDecodeError:
        raise SystemExit(f'--arch {arch!r} is neither one of {list(ARCHS)} nor a JSON '
                         'SAMViT arch dict.')
    return 'sam', custom, window or 14


def sam2_available() -> bool:
    try:
        import sam2  # noqa: F401
    except ImportError:
        return False
    return True


def model_config(args: argparse.Namespace, method: str) -> dict:
    """The ``NASEncoderDecoder`` config of ``method`` on ``args.arch``."""
    spec = METHODS[method]
    arch = args.arch
    family, backbone_arch, window = _arch_spec(arch, args.window_size)
    if spec.get('sam2') and family != 'sam2':
        arch = args.sam2_arch or 'sam2-hiera-t'
        family, backbone_arch, window = _arch_spec(arch, args.window_size)
        if family != 'sam2':
            raise SystemExit(f'--sam2-arch {arch!r} is not a SAM2 arch.')
    tiny = not isinstance(backbone_arch, str) and backbone_arch in (TINY_SAM, TINY_HIERA)
    width = TINY_HEAD['channels'] if tiny else 256
    head = dict(TINY_HEAD) if tiny else dict(in_channels=256, channels=256)
    common = dict(adapter=spec['adapter'], freeze=spec['freeze'] if 'freeze' in spec else True,
                  with_cp=args.with_cp)
    if family == 'sam':
        backbone = dict(type='SAMViT', arch=backbone_arch, img_size=args.size,
                        window_size=window, out_channels=width, **common)
        head.update(type='SAMMaskDecoderHead')
    elif family == 'tinyvit':
        backbone = dict(type='SAMTinyViT', arch=backbone_arch, img_size=args.size, **common)
        head.update(type='SAMMaskDecoderHead', embed_stride=4)
    else:
        backbone = dict(type='SAM2Hiera', arch=backbone_arch, out_channels=width, **common)
        head.update(type='SAM2MaskDecoderHead', decoder_adapter=spec.get('decoder_adapter'))
    head.update(num_classes=2, out_channels=1, threshold=0.5,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, avg_non_ignore=True))
    return dict(
        type='NASEncoderDecoder',
        nas_stage=spec.get('stage', 'search'),
        search_step=spec.get('search_step', 'joint'),
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(args.size, args.size)),
        backbone=backbone, decode_head=head, train_cfg=dict(), test_cfg=dict(mode='whole'),
        _backbone_name=arch)


def build(args: argparse.Namespace, method: str, gpu_like: bool = False):
    """``(model, optim_wrapper, batch, backbone name)`` on ``args.device``.

    Args:
        args (argparse.Namespace): The parsed command line.
        method (str): A key of :data:`METHODS`.
        gpu_like (bool): For :func:`memory_step`: build on the current
            default device (fake tensors cannot be moved by ``.to``) and give
            AdamW/Adam ``foreach=True``, their default for CUDA parameters
            (the CPU default is the per-tensor loop, with fewer temporaries).
            Defaults to False.
    """
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmseg_naslora  # noqa: F401  (registers the modules)
    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    cfg = model_config(args, method)
    name = cfg.pop('_backbone_name')
    model = MODELS.build(cfg)
    if not gpu_like:
        model = model.to(args.device)
    with torch.no_grad():  # B = 0 would make every adapter (and its export) a no-op
        for pname, param in model.named_parameters():
            if 'lora_B' in pname:
                param.normal_(std=1e-2)
    optim = dict(
        constructor='NASOptimWrapperConstructor',
        weights=dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4)),
        alpha=dict(type='OptimWrapper',
                   optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999), weight_decay=0.)))
    if gpu_like:
        for sub in ('weights', 'alpha'):
            optim[sub]['optimizer']['foreach'] = True
    if args.amp and args.device == 'cuda':
        optim.update(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
    elif args.amp:
        optim.update(type=_cpu_autocast_wrapper())
    wrapper = build_optim_wrapper(model, optim)
    assert isinstance(wrapper, OptimWrapper) or 'weights' in wrapper
    return model, wrapper, make_batch(args.batch_size, args.size), name


class _CPUAutocast:
    """Mixin: run the forward inside ``torch.autocast('cpu', bfloat16)``."""

    def optim_context(self, model):
        import contextlib
        stack = contextlib.ExitStack()
        stack.enter_context(super().optim_context(model))
        stack.enter_context(torch.autocast('cpu', dtype=torch.bfloat16))
        return stack


def _cpu_autocast_wrapper():
    from mmengine.optim import OptimWrapper

    class CPUAutocastOptimWrapper(_CPUAutocast, OptimWrapper):
        """OptimWrapper with bf16 autocast on the CPU (mmengine's Amp one needs CUDA).

        bf16 keeps fp32's exponent range, so no loss scaling is needed; the
        parameters, their gradients and the optimiser state stay fp32.
        """

    return CPUAutocastOptimWrapper


def make_batch(num: int, size: int, seed: int = 0) -> dict:
    """A collated batch of random uint8 images and binary masks."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=(torch.rand(1, size, size, generator=gen) > .5).long())
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size)))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
              for _ in range(num)]
    return dict(inputs=inputs, data_samples=samples)


# Measurements -----------------------------------------------------------------
def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # Linux reports KiB


def time_calls(fn: Callable[[], object], device: str, warmup: int, steps: int) -> List[float]:
    """Seconds of each of ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(device: str, dtype: torch.dtype, repeat: int = 5) -> float:
    """FLOP/s of a large square matmul (the best of ``repeat``), a practical peak."""
    n = 2048 if device == 'cpu' else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_calls(lambda: a @ b, device, 1, repeat)
    return 2 * n**3 / min(times)


def measure(args: argparse.Namespace, method: str) -> dict:
    """All columns of one method, in this process."""
    from mmseg_naslora.models.adapters.arch import is_arch_name
    from mmseg_naslora.models.adapters.export import export_adapters

    model, wrapper, batch, backbone = build(args, method)
    spec = METHODS[method]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    row = OrderedDict(
        method=method, label=spec['label'], backbone=backbone,
        trainable_params=sum(p.numel() for _, p in trainable),
        alpha_params=sum(p.numel() for n, p in trainable if is_arch_name(n)),
        model_mb=sum(t.numel() * t.element_size()
                     for t in list(model.parameters()) + list(model.buffers())) / 2**20)
    if args.infer_only:  # inference latency and the export check only
        for key in ('train_step_ms', 'train_step_ms_all', 'peak_train_mem_mb',
                    'flops_per_step', 'achieved_flops'):
            row[key] = None
    else:
        _measure_training(args, model, wrapper, batch, row)
    model.eval()
    inputs = model.data_preprocessor(batch, False)['inputs']
    infer = partial(_infer, model, inputs, args.device if args.amp else None)
    # Timed in turns with the frozen model in this process: separate processes
    # differ by up to 2x in allocator and cache state, which drowns a few %.
    reference = None
    if method != 'frozen' and not spec.get('sam2'):
        reference = partial(_infer, build(args, 'frozen')[0].eval(), inputs,
                            args.device if args.amp else None)
    output = infer()
    row['infer_ms'], row['infer_vs_frozen'] = _infer_times(infer, reference, args)
    # FLOPs are exact where the timing is noisy: the cost an export leaves, to the frozen model's.
    frozen_flops = _flops(reference or infer)
    row['infer_flops_vs_frozen'] = _flops(infer) / frozen_flops
    if method == 'frozen':
        row['infer_vs_frozen'] = 1.0
    mode = spec.get('export')
    row['export_mode'] = None if mode is None else (f'topk{args.topk}' if mode == 'topk'
                                                    else mode)
    row['infer_export_ms'] = row['export_max_abs_diff'] = row['export_vs_frozen'] = None
    row['export_flops_vs_frozen'] = None
    if mode is not None:
        export_adapters(model, mode, topk=args.topk if mode == 'topk' else None)
        row['export_max_abs_diff'] = (infer() - output).abs().max().item()
        row['infer_export_ms'], row['export_vs_frozen'] = _infer_times(infer, reference, args)
        row['export_flops_vs_frozen'] = _flops(infer) / frozen_flops
    return row


def _flops(infer: Callable) -> float:
    """FLOPs of one inference (matmuls, convolutions, attention; not element-wise ops)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        infer()
    return counter.get_total_flops()


def _measure_training(args: argparse.Namespace, model: torch.nn.Module, wrapper,
                      batch: dict, row: dict) -> None:
    """Training step time, peak memory and FLOPs of one method, into ``row``."""
    from torch.utils.flop_counter import FlopCounterMode

    def train_step():
        return model.train_step(batch, wrapper)  # the plan: α steps in every stage-2 step

    model.train()
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, build_peak = _rss_bytes(), _max_rss_bytes()
    times = time_calls(train_step, args.device, args.warmup, args.steps)
    if args.device == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _max_rss_bytes() - base
        # ru_maxrss is a high-water mark: if building the model peaked higher
        # than training, the training peak is hidden (then this is an upper bound).
        row['peak_hidden_by_build'] = _max_rss_bytes() <= build_peak
    row['train_step_ms'] = 1e3 * statistics.median(times)
    row['train_step_ms_all'] = [round(1e3 * t, 2) for t in times]
    row['peak_train_mem_mb'] = peak / 2**20

    with FlopCounterMode(display=False) as flops:
        train_step()
    row['flops_per_step'] = flops.get_total_flops()
    row['achieved_flops'] = row['flops_per_step'] / (row['train_step_ms'] / 1e3)


def _infer(model: torch.nn.Module, inputs: torch.Tensor, autocast: Optional[str]):
    with torch.no_grad(), torch.autocast(autocast or 'cpu', torch.bfloat16,
                                         enabled=autocast is not None):
        return model(inputs, mode='tensor')


def _infer_times(infer: Callable, reference: Optional[Callable],
                 args: argparse.Namespace) -> Tuple[float, Optional[float]]:
    """Median ms of ``infer`` and its ratio to ``reference``, timed in turns."""
    if reference is None:
        return 1e3 * statistics.median(
            time_calls(infer, args.device, args.warmup, args.infer_steps)), None
    times, ref_times = [], []
    for _ in range(args.warmup):
        infer(), reference()
    for _ in range(args.infer_steps):
        times += time_calls(infer, args.device, 0, 1)
        ref_times += time_calls(reference, args.device, 0, 1)
    median = statistics.median(times)
    return 1e3 * median, median / statistics.median(ref_times)


def run_worker(args: argparse.Namespace, argv: List[str]) -> dict:
    """Measure ``args.worker`` in a process of its own and return its row.

    On a POSIX CPU run the process is a fork of this one, which has imported
    everything but run no model (a forked child's peak RSS starts from the
    parent's current RSS, not from its peak). CUDA cannot be used in a fork,
    so there, and without ``os.fork``, a fresh interpreter runs the method.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'row.json')
        if args.device == 'cpu' and hasattr(os, 'fork'):
            error = _forked(lambda: _write_row(args, out))
        else:
            cmd = [sys.executable, osp.abspath(__file__), *argv, '--worker', args.worker,
                   '--worker-out', out]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            error = None if proc.returncode == 0 else (
                ' | '.join(tail) or f'exit code {proc.returncode}')
        if error is not None or not osp.exists(out):
            return OrderedDict(method=args.worker, label=METHODS[args.worker]['label'],
                               error=error or 'the worker wrote no result')
        with open(out) as f:
            return json.load(f, object_pairs_hook=OrderedDict)


def _write_row(args: argparse.Namespace, out: str) -> None:
    row = measure(args, args.worker)
    with open(out, 'w') as f:
        json.dump(row, f)


def _forked(fn: Callable[[], None]) -> Optional[str]:
    """Run ``fn`` in a forked child; the child's error message, or None."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            fn()
        except BaseException as exc:  # report anything, then leave without cleanup
            os.write(write_fd, f'{type(exc).__name__}: {exc}'.encode()[-2000:])
            code = 1
        finally:
            os.close(write_fd)
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as f:
        message = f.read().decode(errors='replace')
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return message or f'worker exit status {os.waitstatus_to_exitcode(status)}'
    return None


def add_ratios(rows: List[dict]) -> None:
    """``ratio_to_lora``/``ratio_to_full`` of every :data:`RATIO_KEYS` value."""
    by_name = {r['method']: r for r in rows}
    for row in rows:
        for ref in ('lora', 'full'):
            base = by_name.get(ref, {})
            row[f'ratio_to_{ref}'] = OrderedDict(
                (k, row[k] / base[k] if row.get(k) is not None and base.get(k) else None)
                for k in RATIO_KEYS)


def device_name(device: str) -> str:
    if device == 'cuda':
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        name = next(line.split(':', 1)[1].strip() for line in out.splitlines()
                    if line.startswith('Model name'))
    except (OSError, StopIteration):
        pass
    return f'{name}, {torch.get_num_threads()} threads (os.cpu_count()={os.cpu_count()})'


def _fmt(value, spec: str = '.0f') -> str:
    return '—' if value is None else format(value, spec)


def _ratio(row: dict, key: str) -> str:
    parts = [_fmt(row.get(f'ratio_to_{ref}', {}).get(key), '.2f') for ref in ('lora', 'full')]
    return ' / '.join(parts)


def markdown(result: dict) -> str:
    meta = result['meta']
    lines = [
        f"**{meta['arch']}**, {meta['size']}², batch {meta['batch_size']}, "
        f"{meta['device_name']}, {'bf16 autocast' if meta['amp'] else 'fp32'}"
        f"{', activation checkpointing' if meta['with_cp'] else ''}; "
        + (f"inference only, median of {meta['infer_steps']} forwards per model after "
           f"{meta['warmup']} warm-up" if meta.get('infer_only') else
           f"median of {meta['steps']} steps after {meta['warmup']} warm-up")
        + f"; {meta['weights']}. "
        f"Matmul peak: {meta['matmul_peak_gflops']:.0f} GFLOP/s ({meta['peak_dtype']}). "
        'Ratios are ×LoRA / ×full fine-tune; inference is also timed in turns with the '
        'frozen model in the same process (× frozen)'
        + ('; glibc malloc thresholds fixed (tune_cpu_allocator).' if meta.get('malloc_tuned')
           else '.'),
        '',
        '| method | backbone | trainable params | ratio | train step ms | ratio | '
        'peak train MB | ratio | infer ms (× frozen) | exported ms (× frozen; FLOPs × frozen; '
        'mode, max diff) | '
        'GFLOP/step | '
        'GFLOP/s (% peak) |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in result['rows']:
        if 'error' in row:
            lines.append(f"| {row['label']} | error: {row['error'][:120]} |" + ' |' * 10)
            continue
        params = f"{row['trainable_params']:,}" + (
            f" (α {row['alpha_params']})" if row['alpha_params'] else '')
        flops = '— | —' if row['flops_per_step'] is None else (
            f"{row['flops_per_step'] / 1e9:.2f} | {row['achieved_flops'] / 1e9:.1f} "
            f"({100 * row['achieved_flops'] / meta['matmul_peak_flops']:.0f}%)")
        export = '—' if row['export_mode'] is None else (
            f"{row['infer_export_ms']:.1f} ({_fmt(row['export_vs_frozen'], '.2f')}; "
            f"FLOPs {_fmt(row.get('export_flops_vs_frozen'), '.4f')}; "
            f"{row['export_mode']}, {row['export_max_abs_diff']:.1e})")
        lines.append(
            f"| {row['label']} | {row['backbone']} | {params} | "
            f"{_ratio(row, 'trainable_params')} | {_fmt(row['train_step_ms'], '.1f')} | "
            f"{_ratio(row, 'train_step_ms')} | {_fmt(row['peak_train_mem_mb'])} | "
            f"{_ratio(row, 'peak_train_mem_mb')} | {row['infer_ms']:.1f} "
            f"({_fmt(row['infer_vs_frozen'], '.2f')}) | {export} | {flops} |")
    return '\n'.join(lines) + '\n'


# Fake-tensor memory -------------------------------------------------------------
FAKE_MEMORY_METHOD = (
    'One steady-state training step (the second: the first creates the optimiser state) '
    'runs under torch FakeTensorMode, where every op computes only the shapes of its '
    'outputs, so no memory is used and nothing is computed. A TorchDispatchMode counts '
    'each new output storage (views and in-place ops add none) until Python frees it, '
    'rounded up to the 512-byte blocks of the CUDA caching allocator, and reports the peak '
    'of the sum: what torch.cuda.max_memory_allocated would show, less op-internal '
    'buffers (cuBLAS/cuDNN workspaces, the nonzero index of a boolean mask), and before '
    'allocator fragmentation (max_memory_reserved) and the CUDA context.')


def _batch_tensors(batch: dict) -> List[torch.Tensor]:
    """The images and ground-truth maps of a :func:`make_batch` batch."""
    tensors = list(batch['inputs'])
    for sample in batch['data_samples']:
        tensors += [v for v in sample.gt_sem_seg.values() if isinstance(v, torch.Tensor)]
    return tensors


def memory_step(args: argparse.Namespace, method: str, fake: bool = True) -> dict:
    """Peak tensor memory of one training step of ``method`` and its split.

    Args:
        args (argparse.Namespace): The parsed command line (``--arch``,
            ``--size``, ``--batch-size``, ``--with-cp``).
        method (str): A key of :data:`METHODS`.
        fake (bool): Fake tensors (no memory, no compute: any size fits) or
            real CPU tensors (to cross-check them). Defaults to True.

    Returns:
        dict: The row: trainable parameters and tensors, ``peak_mib``, the
        phase it falls in, ``at_peak_mib`` (the split at the peak),
        ``max_mib`` (each kind's own maximum in the step) and ``start_mib``
        (what is live when the step starts).
    """
    import contextlib
    import gc

    from torch._subclasses.fake_tensor import FakeTensorMode

    from mmseg_naslora.models.adapters.arch import is_arch_name
    from mmseg_naslora.utils.memory_tracker import AllValidMode, StorageTracker

    start = time.perf_counter()
    valid = AllValidMode()
    with contextlib.ExitStack() as stack:
        if fake:
            # allow_non_fake_inputs: constants made at import time are real tensors.
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            stack.enter_context(valid)
        model, wrapper, batch, backbone = build(args, method, gpu_like=True)
        optimizers = [wrapper.optimizer] if not hasattr(wrapper, 'items') else [
            sub.optimizer for _, sub in wrapper.items()]
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        model.train()
        model.train_step(batch, wrapper)  # creates the optimiser state
        gc.collect()
        valid.nonzero_calls = 0
        with StorageTracker().start(model, optimizers, _batch_tensors(batch)) as tracker:
            start_split = OrderedDict(tracker.current)
            model.train_step(batch, wrapper)
    spec = METHODS[method]
    return OrderedDict(
        method=method, label=spec['label'], backbone=backbone,
        trainable_params=sum(p.numel() for _, p in trainable),
        trainable_tensors=len(trainable),
        alpha_params=sum(p.numel() for n, p in trainable if is_arch_name(n)),
        peak_mib=tracker.peak / 2**20, peak_phase=tracker.peak_phase,
        at_peak_mib=_mib(tracker.at_peak), max_mib=_mib(tracker.most),
        start_mib=_mib(start_split),
        # nonzero answered "all selected": the row is an upper bound
        upper_bound=valid.nonzero_calls > 0,
        wall_s=round(time.perf_counter() - start, 2))


def _mib(split: Dict[str, int]) -> 'OrderedDict[str, float]':
    return OrderedDict((k, v / 2**20) for k, v in split.items())


def memory_markdown(result: dict) -> str:
    """The ``--fake-memory`` table: peak and its split per method."""
    meta = result['meta']
    by_name = {r['method']: r for r in result['rows'] if 'error' not in r}
    bounded = any(r['upper_bound'] for r in by_name.values())
    lines = [
        f"**{meta['arch']}**, {meta['size']}², batch {meta['batch_size']}, fp32"
        f"{', activation checkpointing' if meta['with_cp'] else ''}: peak tensor memory of one "
        f"steady-state training step, MiB in 512-byte CUDA blocks "
        f"({'fake' if meta['fake'] else 'real CPU'} tensors; AdamW foreach), split at the "
        'peak; activations include the batch; temporaries are backward and optimiser '
        'outputs (with checkpointing: the recomputed activations).'
        + (' * upper bound: data-dependent routing (`nonzero`, Conv-LoRA\'s experts) taken '
           'as every expert on every sample.' if bounded else ''),
        '',
        '| method | trainable params | peak MiB | × LoRA | × full | params + buffers | '
        'grads | optimizer state | activations | temporaries | peak in |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    peaks = [r['peak_mib'] for r in by_name.values()]
    spec = ',.0f' if peaks and max(peaks) >= 100 else '.2f'  # tiny test models: 2 decimals
    for row in result['rows']:
        if 'error' in row:
            lines.append(f"| {row['label']} | error: {row['error'][:120]} |" + ' |' * 9)
            continue
        split = row['at_peak_mib']
        params = f"{row['trainable_params']:,}" + (
            f" (α {row['alpha_params']})" if row['alpha_params'] else '')
        ratios = [row['peak_mib'] / by_name[ref]['peak_mib'] if ref in by_name else None
                  for ref in ('lora', 'full')]
        lines.append(
            f"| {row['label']} | {params} | {row['peak_mib']:{spec}}"
            f"{' *' if row['upper_bound'] else ''} | {_fmt(ratios[0], '.2f')} | "
            f"{_fmt(ratios[1], '.2f')} | {split['params'] + split['buffers']:{spec}} | "
            f"{split['grads']:{spec}} | {split['optimizer']:{spec}} | "
            f"{split['activations'] + split['inputs']:{spec}} | {split['temporaries']:{spec}} | "
            f"{row['peak_phase']} |")
    return '\n'.join(lines) + '\n'


def run_memory(args: argparse.Namespace, methods: List[str]) -> dict:
    """``--fake-memory``: :func:`memory_step` of every method, in this process."""
    from mmseg_naslora.utils import memory_tracker

    rows = []
    for method in methods:
        try:
            rows.append(memory_step(args, method, fake=not args.real_tensors))
        except Exception as exc:  # report it in its row and go on
            rows.append(OrderedDict(method=method, label=METHODS[method]['label'],
                                    error=f'{type(exc).__name__}: {exc}'[-2000:]))
        print(f"{method}: {rows[-1].get('wall_s', 0):.0f} s"
              + (f" (error: {rows[-1]['error']})" if 'error' in rows[-1] else ''),
              file=sys.stderr, flush=True)
    meta = OrderedDict(
        arch=args.arch, size=args.size, batch_size=args.batch_size, with_cp=args.with_cp,
        fake=not args.real_tensors, dtype='float32', block_bytes=memory_tracker.CUDA_BLOCK_BYTES,
        optimizer='AdamW (weights) / Adam (α), foreach=True as on CUDA',
        torch=torch.__version__, method=FAKE_MEMORY_METHOD, weights=RANDOM_WEIGHTS_NOTE,
        max_rss_mib=_max_rss_bytes() / 2**20)
    return dict(meta=meta, rows=rows)


# Profile ----------------------------------------------------------------------
_LABELS = ('nas.cell', 'nas.attention', 'nas.mlp', 'nas.decoder', 'nas.optimizer')


def profile(args: argparse.Namespace) -> dict:
    """Where one training step of ``args.profile`` spends its time.

    Forward ops are attributed to the innermost labelled module range (the
    adapters' bottleneck = cell, the rest of each block's attention, its
    MLP, the decode head); backward ops inherit the label of the forward op
    that created their autograd node (same ``sequence_nr``); the optimiser
    steps are labelled too. Everything else (patch embedding, norms, neck,
    loss, data preprocessing) is ``other``.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mmseg_naslora.models.adapters.lora import LoRA

    model, wrapper, batch, _ = build(args, args.profile)
    model.train()
    open_ranges: Dict[int, list] = {}

    def labelled(module: torch.nn.Module, label: str) -> None:
        def pre(mod, _inputs):
            rf = record_function(label)
            rf.__enter__()
            open_ranges.setdefault(id(mod), []).append(rf)

        def post(mod, _inputs, _output):
            open_ranges[id(mod)].pop().__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for name, module in model.named_modules():
        if isinstance(module, LoRA) and module.spatial:
            bottleneck = module.bottleneck

            def cell(*args, _f=bottleneck):
                with record_function('nas.cell'):
                    return _f(*args)

            module.bottleneck = cell
        elif name.startswith('backbone') and name.endswith('.attn'):
            labelled(module, 'nas.attention')
        elif name.startswith('backbone') and name.endswith('.mlp'):
            labelled(module, 'nas.mlp')
    # mmseg's decode heads call self.forward (not __call__) in loss(): wrap it.
    head_forward = model.decode_head.forward

    def head(*a, **k):
        with record_function('nas.decoder'):
            return head_forward(*a, **k)

    model.decode_head.forward = head
    for sub in ([wrapper] if not hasattr(wrapper, 'items') else [w for _, w in wrapper.items()]):
        step = sub.optimizer.step

        def stepped(*a, _f=step, **k):
            with record_function('nas.optimizer'):
                return _f(*a, **k)

        sub.optimizer.step = stepped
    for _ in range(args.warmup):
        model.train_step(batch, wrapper)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.train_step(batch, wrapper)
        wall = time.perf_counter() - start
    parts = _attribute(prof.events())
    # Unlabelled forward work (patch embedding, norms, neck, loss, preprocessing)
    # and Python overhead; the profiler itself slows the step down a little.
    parts['unattributed_ms'] = round(1e3 * wall - sum(parts['forward_ms'].values())
                                     - sum(parts['backward_ms'].values())
                                     - parts['optimizer_ms'], 2)
    return dict(method=args.profile, wall_ms=1e3 * wall, **parts)


def _attribute(events) -> dict:
    ranges = [e for e in events if e.name in _LABELS]
    ranges.sort(key=lambda e: e.time_range.start)
    seq_label: Dict[int, str] = {}
    fwd = {k: 0. for k in _LABELS}
    for e in ranges:
        if e.name != 'nas.optimizer':
            fwd[e.name] += e.cpu_time_total
    # Nested labels: attention contains the cell; report exclusive times.
    fwd['nas.attention'] -= fwd['nas.cell']

    def innermost(ev) -> Optional[str]:
        best = None
        for r in ranges:
            if r.time_range.start > ev.time_range.start:
                break
            if r.thread == ev.thread and ev.time_range.end <= r.time_range.end:
                best = r.name
        return best

    backward = {k: 0. for k in _LABELS}
    backward['other'] = 0.
    bwd_events = []
    for e in events:
        if e.name.startswith('autograd::engine::evaluate_function'):
            bwd_events.append(e)
        elif e.sequence_nr >= 0 and e.name not in _LABELS and e.sequence_nr not in seq_label:
            label = innermost(e)
            if label is not None:
                seq_label[e.sequence_nr] = label
    for e in bwd_events:
        backward[seq_label.get(e.sequence_nr, 'other')] += e.cpu_time_total
    optim = sum(e.cpu_time_total for e in ranges if e.name == 'nas.optimizer')

    def ms(us: float) -> float:
        return round(us / 1e3, 2)

    return dict(
        forward_ms={k.split('.')[1]: ms(v) for k, v in fwd.items() if k != 'nas.optimizer'},
        backward_ms={k.split('.')[-1]: ms(v) for k, v in backward.items()
                     if k != 'nas.optimizer'},
        optimizer_ms=ms(optim))


# Main -------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        row = measure(args, args.worker)
        with open(args.worker_out, 'w') as f:
            json.dump(row, f)
        return
    if args.profile:
        result = profile(args)
        print(json.dumps(result, indent=1))
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(result, f, indent=1)
        return
    methods = args.methods or list(METHODS)
    if 'sam2lora' in methods and not sam2_available():
        print('sam2 is not importable: the sam2lora row is skipped (see docs/sam2lora.md).')
        methods.remove('sam2lora')
    if args.fake_memory:
        result = run_memory(args, methods)
        _write_result(result, memory_markdown(result), args)
        return
    malloc_tuned = False
    if args.device == 'cpu':  # import and tune once here; the forked workers inherit it
        from mmseg.utils import register_all_modules

        import mmseg_naslora  # noqa: F401
        from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator
        register_all_modules(init_default_scope=True)
        malloc_tuned = tune_cpu_allocator()
    rows = []
    for method in methods:
        args.worker = method
        start = time.perf_counter()
        rows.append(run_worker(args, argv))
        print(f'{method}: {time.perf_counter() - start:.0f} s'
              + (f" (error: {rows[-1]['error']})" if 'error' in rows[-1] else ''),
              file=sys.stderr, flush=True)
    args.worker = None
    # After the workers: no parallel torch op may run in this process before a fork.
    peak_dtype = torch.bfloat16 if args.amp else torch.float32
    peak = matmul_peak(args.device, peak_dtype)
    add_ratios(rows)
    meta = OrderedDict(
        arch=args.arch, size=args.size, batch_size=args.batch_size, device=args.device,
        device_name=device_name(args.device), amp=args.amp, with_cp=args.with_cp,
        steps=args.steps, warmup=args.warmup, infer_steps=args.infer_steps,
        infer_only=args.infer_only, malloc_tuned=malloc_tuned, torch=torch.__version__, weights=RANDOM_WEIGHTS_NOTE,
        peak_dtype=str(peak_dtype).replace('torch.', ''), matmul_peak_flops=peak,
        matmul_peak_gflops=peak / 1e9)
    result = dict(meta=meta, rows=rows)
    _write_result(result, markdown(result), args)


def _write_result(result: dict, table: str, args: argparse.Namespace) -> None:
    """Print ``table``; write ``result`` to ``--out`` and ``table`` to ``--markdown``."""
    print(table)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)


if __name__ == '__main__':
    main()

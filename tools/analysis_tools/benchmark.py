"""Benchmark the fine-tuning methods on one SAM backbone: parameters, time, memory, FLOPs.

Every method (:data:`benchmark_models.METHODS`, each a model config of
``configs/_base_/models``) is measured in its own subprocess (so that peak
memory is its own) with the project's real training path: the segmentor's
``train_step`` and the ``OptimWrapperDict`` of ``NASOptimWrapperConstructor``
(a plain wrapper for α-free models). Weights are random: the timings do not
depend on them, and no checkpoint is needed.

Examples::

    # the table of docs/benchmarks.md (CPU, 2 threads)
    python tools/analysis_tools/benchmark.py --arch vit-b --size 512 --batch-size 1 \
        --steps 3 --warmup 1 --threads 2 --out work_dirs/bench_vit-b_512.json
    # GPU memory/time with bf16 autocast and activation checkpointing
    python tools/analysis_tools/benchmark.py --arch vit-h --size 1024 --batch-size 1 \
        --device cuda --amp --with-cp --out bench_vit-h_cp.json
    # CI smoke test: a tiny random SAM, 1 warm-up step, 2 timed steps
    python tools/analysis_tools/benchmark.py --quick --out /tmp/bench.json

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
  frozen model timed in turns with it in the same process, and the exact
  FLOPs of both as ratios to the frozen model's;
* FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``:
  matmuls, convolutions and attention; element-wise ops are not counted) and
  the achieved FLOP/s next to a timed large matmul on the same device;
* every number's ratio to LoRA and to full fine-tuning from the same run.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from functools import partial
from typing import Callable, List, Optional, Tuple

import torch
from benchmark_models import (METHODS, RANDOM_WEIGHTS_NOTE, REPO_ROOT, build, fmt,
                              markdown_table, max_rss_bytes, model_parser, parse_model_args,
                              selected_methods, write_result)
from mmengine.optim import OptimWrapper
from torch.utils.flop_counter import FlopCounterMode

from mmseg_naslora.models.adapters.arch import is_arch_name
from mmseg_naslora.models.adapters.export import export_adapters
from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator
from mmseg_naslora.utils.timing import timed_in_turns

#: Metrics that get ``ratio_to_lora``/``ratio_to_full``.
RATIO_KEYS = ('trainable_params', 'train_step_ms', 'peak_train_mem_mb', 'infer_ms',
              'infer_export_ms', 'flops_per_step')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = model_parser(__doc__.split('\n')[0])
    parser.add_argument('--markdown', help='also write the markdown table here')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--steps', type=int, default=3, help='timed training steps')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps before them')
    parser.add_argument('--infer-steps', type=int, default=None,
                        help='timed inference runs (default: --steps)')
    parser.add_argument('--topk', type=int, default=2, help='ops kept by the DARTS export')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast (CUDA: AmpOptimWrapper; CPU: torch.autocast)')
    parser.add_argument('--infer-only', action='store_true',
                        help='measure only inference latency and the export (no training step)')
    parser.add_argument('--worker', metavar='METHOD', help=argparse.SUPPRESS)
    parser.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = parse_model_args(parser, argv)
    if args.quick:
        args.warmup, args.steps = 1, 2
    if args.infer_steps is None:
        args.infer_steps = args.steps
    if args.steps < 1 or args.warmup < 0:
        parser.error('--steps must be >= 1 and --warmup >= 0.')
    return args


class CPUAutocastOptimWrapper(OptimWrapper):
    """OptimWrapper with bf16 autocast on the CPU (mmengine's Amp one needs CUDA).

    bf16 keeps fp32's exponent range, so no loss scaling is needed; the
    parameters, their gradients and the optimiser state stay fp32. Only
    ``--amp`` on the CPU uses it: training configs run AMP on CUDA.
    """

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield


def amp_wrapper(args: argparse.Namespace) -> Optional[dict]:
    """The top-level ``optim_wrapper`` keys of ``--amp`` on ``--device``."""
    if not args.amp:
        return None
    if args.device == 'cuda':
        return dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
    return dict(type=CPUAutocastOptimWrapper)


# Measurements -----------------------------------------------------------------
def _rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def matmul_peak(device: str, dtype: torch.dtype, repeat: int = 5) -> float:
    """FLOP/s of a large square matmul (the best of ``repeat``), a practical peak."""
    n = 2048 if device == 'cpu' else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = timed_in_turns([lambda: a @ b], repeat, device=device)[0]
    return 2 * n**3 / min(times)


def measure(args: argparse.Namespace, method: str) -> dict:
    """All columns of one method, in this process."""
    model, wrapper, batch, backbone = build(args, method, wrapper=amp_wrapper(args))
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


def _flops(fn: Callable) -> float:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; not element-wise ops)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _measure_training(args: argparse.Namespace, model: torch.nn.Module, wrapper,
                      batch: dict, row: dict) -> None:
    """Training step time, peak memory and FLOPs of one method, into ``row``."""

    def train_step():
        return model.train_step(batch, wrapper)  # the plan: α steps in every stage-2 step

    model.train()
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, build_peak = _rss_bytes(), max_rss_bytes()
    times = timed_in_turns([train_step], args.steps, args.warmup, args.device)[0]
    if args.device == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max_rss_bytes() - base
        # ru_maxrss is a high-water mark: if building the model peaked higher
        # than training, the training peak is hidden (then this is an upper bound).
        row['peak_hidden_by_build'] = max_rss_bytes() <= build_peak
    row['train_step_ms'] = 1e3 * statistics.median(times)
    row['train_step_ms_all'] = [round(1e3 * t, 2) for t in times]
    row['peak_train_mem_mb'] = peak / 2**20
    row['flops_per_step'] = _flops(train_step)
    row['achieved_flops'] = row['flops_per_step'] / (row['train_step_ms'] / 1e3)


def _infer(model: torch.nn.Module, inputs: torch.Tensor, autocast: Optional[str]):
    with torch.no_grad(), torch.autocast(autocast or 'cpu', torch.bfloat16,
                                         enabled=autocast is not None):
        return model(inputs, mode='tensor')


def _infer_times(infer: Callable, reference: Optional[Callable],
                 args: argparse.Namespace) -> Tuple[float, Optional[float]]:
    """Median ms of ``infer`` and its ratio to ``reference``, timed in turns."""
    fns = [infer] if reference is None else [infer, reference]
    medians = [statistics.median(t) for t in timed_in_turns(fns, args.infer_steps,
                                                            args.warmup, args.device)]
    return 1e3 * medians[0], None if reference is None else medians[0] / medians[1]


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


# Markdown ---------------------------------------------------------------------
def _ratio(row: dict, key: str) -> str:
    parts = [fmt(row.get(f'ratio_to_{ref}', {}).get(key), '.2f') for ref in ('lora', 'full')]
    return ' / '.join(parts)


def markdown(result: dict) -> str:
    meta = result['meta']
    caption = (
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
           else '.'))
    header = ['method', 'backbone', 'trainable params', 'ratio', 'train step ms', 'ratio',
              'peak train MB', 'ratio', 'infer ms (× frozen)',
              'exported ms (× frozen; FLOPs × frozen; mode, max diff)', 'GFLOP/step',
              'GFLOP/s (% peak)']
    return markdown_table(caption, header, [_cells(row, meta, len(header))
                                            for row in result['rows']])


def _cells(row: dict, meta: dict, width: int) -> List[str]:
    """One row of the table."""
    if 'error' in row:
        return [row['label'], f"error: {row['error'][:120]}"] + [''] * (width - 2)
    params = f"{row['trainable_params']:,}" + (
        f" (α {row['alpha_params']})" if row['alpha_params'] else '')
    flops = ['—', '—'] if row['flops_per_step'] is None else [
        f"{row['flops_per_step'] / 1e9:.2f}",
        f"{row['achieved_flops'] / 1e9:.1f} "
        f"({100 * row['achieved_flops'] / meta['matmul_peak_flops']:.0f}%)"]
    export = '—' if row['export_mode'] is None else (
        f"{row['infer_export_ms']:.1f} ({fmt(row['export_vs_frozen'], '.2f')}; "
        f"FLOPs {fmt(row.get('export_flops_vs_frozen'), '.4f')}; "
        f"{row['export_mode']}, {row['export_max_abs_diff']:.1e})")
    return [row['label'], row['backbone'], params, _ratio(row, 'trainable_params'),
            fmt(row['train_step_ms'], '.1f'), _ratio(row, 'train_step_ms'),
            fmt(row['peak_train_mem_mb']), _ratio(row, 'peak_train_mem_mb'),
            f"{row['infer_ms']:.1f} ({fmt(row['infer_vs_frozen'], '.2f')})", export, *flops]


# Main -------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        _write_row(args, args.worker_out)
        return
    methods = selected_methods(args)
    # Tuned once here: the forked workers inherit it.
    malloc_tuned = args.device == 'cpu' and tune_cpu_allocator()
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
        infer_only=args.infer_only, malloc_tuned=malloc_tuned, torch=torch.__version__,
        weights=RANDOM_WEIGHTS_NOTE, peak_dtype=str(peak_dtype).replace('torch.', ''),
        matmul_peak_flops=peak, matmul_peak_gflops=peak / 1e9)
    result = dict(meta=meta, rows=rows)
    write_result(result, markdown(result), args)


if __name__ == '__main__':
    main()

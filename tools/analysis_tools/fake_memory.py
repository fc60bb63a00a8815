"""GPU memory of one fp32 training step of each method, computed without a GPU.

One steady-state training step of every method of
:data:`benchmark_models.METHODS` runs under ``FakeTensorMode`` (see
:func:`memory_step`): params, buffers, gradients, optimiser state,
activations and backward/optimiser temporaries are counted exactly, in the
512-byte blocks of the CUDA caching allocator, so any size fits. SAM's
attention is the explicit ``softmax(q·kᵀ)`` of ``segment_anything`` (no
``scaled_dot_product_attention``), so the path is the one a GPU takes.

There is no ``--amp`` or ``--device cuda``: fake CUDA tensors cannot run a
backward without a GPU (the autograd engine needs a CUDA context), and CPU
autocast keeps softmax and layer_norm in bf16 where CUDA autocast runs them in
fp32, so a fake bf16 run would not be the GPU's; measure those with
``benchmark.py --device cuda``.

Examples::

    python tools/analysis_tools/fake_memory.py --arch vit-h --size 1024 --batch-size 1 \
        --with-cp --out work_dirs/fakemem/vit-h_1024_cp.json
    # the same accounting for real on the CPU, to cross-check the fake numbers
    python tools/analysis_tools/fake_memory.py --quick --real-tensors
"""
import argparse
import contextlib
import gc
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from benchmark_models import (METHODS, RANDOM_WEIGHTS_NOTE, batch_tensors, build, fmt,
                              markdown_table, max_rss_bytes, model_parser, optimizers,
                              parse_model_args, selected_methods, write_result)
from memory_tracker import CUDA_BLOCK_BYTES, AllValidMode, StorageTracker
from torch._subclasses.fake_tensor import FakeTensorMode

from mmseg_naslora.models.adapters.arch import is_arch_name

FAKE_MEMORY_METHOD = (
    'One steady-state training step (the second: the first creates the optimiser state) '
    'runs under torch FakeTensorMode, where every op computes only the shapes of its '
    'outputs, so no memory is used and nothing is computed. A TorchDispatchMode counts '
    'each new output storage (views and in-place ops add none) until Python frees it, '
    'rounded up to the 512-byte blocks of the CUDA caching allocator, and reports the peak '
    'of the sum: what torch.cuda.max_memory_allocated would show, less op-internal '
    'buffers (cuBLAS/cuDNN workspaces, the nonzero index of a boolean mask), and before '
    'allocator fragmentation (max_memory_reserved) and the CUDA context.')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = model_parser(__doc__.split('\n')[0])
    parser.add_argument('--markdown', help='also write the markdown table here')
    parser.add_argument('--real-tensors', action='store_true',
                        help='the same accounting on real CPU tensors (runs the step for '
                        'real), to cross-check the fake numbers')
    return parse_model_args(parser, argv)


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
    start = time.perf_counter()
    valid = AllValidMode()
    with contextlib.ExitStack() as stack:
        if fake:
            # allow_non_fake_inputs: constants made at import time are real tensors.
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            stack.enter_context(valid)
        model, wrapper, batch, backbone = build(args, method, gpu_like=True)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        model.train()
        model.train_step(batch, wrapper)  # creates the optimiser state
        gc.collect()
        valid.nonzero_calls = 0
        with StorageTracker().start(model, optimizers(wrapper),
                                    batch_tensors(batch)) as tracker:
            start_split = OrderedDict(tracker.current)
            model.train_step(batch, wrapper)
    return OrderedDict(
        method=method, label=METHODS[method]['label'], backbone=backbone,
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
    """The table: peak and its split per method."""
    meta = result['meta']
    by_name = {r['method']: r for r in result['rows'] if 'error' not in r}
    bounded = any(r['upper_bound'] for r in by_name.values())
    caption = (
        f"**{meta['arch']}**, {meta['size']}², batch {meta['batch_size']}, fp32"
        f"{', activation checkpointing' if meta['with_cp'] else ''}: peak tensor memory of one "
        f"steady-state training step, MiB in 512-byte CUDA blocks "
        f"({'fake' if meta['fake'] else 'real CPU'} tensors; AdamW foreach), split at the "
        'peak; activations include the batch; temporaries are backward and optimiser '
        'outputs (with checkpointing: the recomputed activations).'
        + (' * upper bound: data-dependent routing (`nonzero`, Conv-LoRA\'s experts) taken '
           'as every expert on every sample.' if bounded else ''))
    header = ['method', 'trainable params', 'peak MiB', '× LoRA', '× full', 'params + buffers',
              'grads', 'optimizer state', 'activations', 'temporaries', 'peak in']
    peaks = [r['peak_mib'] for r in by_name.values()]
    spec = ',.0f' if peaks and max(peaks) >= 100 else '.2f'  # tiny test models: 2 decimals
    rows = []
    for row in result['rows']:
        if 'error' in row:
            rows.append([row['label'], f"error: {row['error'][:120]}"] + [''] * 9)
            continue
        split = row['at_peak_mib']
        params = f"{row['trainable_params']:,}" + (
            f" (α {row['alpha_params']})" if row['alpha_params'] else '')
        ratios = [fmt(row['peak_mib'] / by_name[ref]['peak_mib'] if ref in by_name else None,
                      '.2f') for ref in ('lora', 'full')]
        mib = [split['params'] + split['buffers'], split['grads'], split['optimizer'],
               split['activations'] + split['inputs'], split['temporaries']]
        rows.append([row['label'], params,
                     f"{row['peak_mib']:{spec}}{' *' if row['upper_bound'] else ''}", *ratios,
                     *(f'{v:{spec}}' for v in mib), row['peak_phase']])
    return markdown_table(caption, header, rows)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    rows = []
    for method in selected_methods(args):
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
        fake=not args.real_tensors, dtype='float32', block_bytes=CUDA_BLOCK_BYTES,
        optimizer='AdamW (weights) / Adam (α), foreach=True as on CUDA',
        torch=torch.__version__, method=FAKE_MEMORY_METHOD, weights=RANDOM_WEIGHTS_NOTE,
        max_rss_mib=max_rss_bytes() / 2**20)
    result = dict(meta=meta, rows=rows)
    write_result(result, memory_markdown(result), args)


if __name__ == '__main__':
    main()

"""Where one CPU training step of a method spends its time (torch.profiler).

The method is a key of :data:`benchmark_models.METHODS`, built from its model
config as by ``benchmark.py``. Forward ops are attributed to the innermost
labelled module range (the adapters' bottleneck = cell, the rest of each
block's attention, its MLP, the decode head); backward ops inherit the label
of the forward op that created their autograd node (same ``sequence_nr``);
the optimiser steps are labelled too. Everything else (patch embedding,
norms, neck, loss, data preprocessing) is ``unattributed_ms``.

Example::

    python tools/analysis_tools/profile_step.py nas_lora_s2 --arch vit-b --size 256
"""
import argparse
import json
import time
from typing import Dict, List, Optional

import torch
from benchmark_models import METHODS, build, model_parser, optimizers, parse_model_args
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from mmseg_naslora.models.adapters.lora import LoRA

_LABELS = ('nas.cell', 'nas.attention', 'nas.mlp', 'nas.decoder', 'nas.optimizer')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = model_parser(__doc__.split('\n')[0], methods=False)
    parser.add_argument('method', choices=list(METHODS), help='the method to profile')
    parser.add_argument('--warmup', type=int, default=1,
                        help='unprofiled steps before the profiled one')
    return parse_model_args(parser, argv)


def _label_forward(model: torch.nn.Module, optim_wrapper) -> None:
    """Wrap the cells, attention, MLPs, decode head and optimiser steps in labelled ranges."""
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
    for optimizer in optimizers(optim_wrapper):
        step = optimizer.step

        def stepped(*a, _f=step, **k):
            with record_function('nas.optimizer'):
                return _f(*a, **k)

        optimizer.step = stepped


def profile_step(args: argparse.Namespace) -> dict:
    """Forward, backward and optimiser milliseconds of one step of ``args.method``, by part."""
    model, wrapper, batch, _ = build(args, args.method)
    model.train()
    _label_forward(model, wrapper)
    for _ in range(args.warmup):
        model.train_step(batch, wrapper)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.train_step(batch, wrapper)
        wall = time.perf_counter() - start
    parts = _attribute(prof.events())
    # Unlabelled forward work (patch embedding, norms, neck, loss, preprocessing)
    # and Python overhead; the profiler itself slows the step down a little.
    parts['unattributed_ms'] = round(1e3 * wall - sum(parts['forward_ms'].values())
                                     - sum(parts['backward_ms'].values())
                                     - parts['optimizer_ms'], 2)
    return dict(method=args.method, wall_ms=1e3 * wall, **parts)


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


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    result = profile_step(args)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()

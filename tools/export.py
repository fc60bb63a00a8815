"""Export a trained adapter model to its inference form.

    python tools/export.py CONFIG CHECKPOINT --mode {fold,collapse,topk} \
        [--topk K] --out OUT_DIR [--shape H W] [--cfg-options ...]
    python tools/export.py CONFIG CHECKPOINT --mode adapters --out OUT_DIR

Writes ``OUT_DIR/exported.pth`` and ``OUT_DIR/exported_config.py`` (run them
with ``tools/test.py``), then prints the largest output difference between
the original and the exported model on a random input, and the CPU latency
of both. The conversion is :func:`mmseg_naslora.models.adapters.export.export_adapters`.

``--mode adapters`` instead writes ``OUT_DIR/adapters.safetensors``: the
trained tensors of the checkpoint only, to share and to load onto the base
SAM checkpoint with ``tools/test.py CONFIG OUT_DIR/adapters.safetensors``
(:mod:`mmseg_naslora.models.utils.adapter_io`).
"""
import argparse
import copy
import os
import os.path as osp
import statistics
import time
from typing import List, Sequence, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader fix)
from mmseg_naslora.models.adapters.export import EXPORT_MODES, export_adapters
from mmseg_naslora.models.utils.adapter_io import (adapter_state_dict, base_checkpoints,
                                                   save_adapters)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fold, collapse or prune trained adapters for inference')
    parser.add_argument('config', help='training config file path')
    parser.add_argument('checkpoint', help='trained checkpoint file')
    parser.add_argument('--mode', required=True, choices=EXPORT_MODES + ('adapters', ),
                        help='fold: merge LoRA into qkv; collapse: linear NAS '
                        'cells -> one conv; topk: keep the top-k ops per cell; '
                        'adapters: write the trained tensors to adapters.safetensors')
    parser.add_argument('--topk', type=int, help='ops to keep with --mode topk')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size of the check (default: the crop size)')
    parser.add_argument('--repeat', type=int, default=5,
                        help='timed forward passes per model (median reported)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    args = parser.parse_args(argv)
    if args.mode == 'topk' and args.topk is None:
        parser.error('--mode topk needs --topk K')
    return args


def input_shape(cfg: Config, shape: Sequence[int] = None) -> Tuple[int, int]:
    """The check's input size: ``--shape``, else the preprocessor size/crop size."""
    if shape:
        return tuple(shape)
    size = cfg.model.get('data_preprocessor', {}).get('size') \
        or cfg.get('crop_size')
    if size is None:
        raise SystemExit('the config sets neither model.data_preprocessor.size '
                         'nor crop_size; pass --shape H W.')
    return tuple(size)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    out = model(x, mode='tensor')
    return list(out) if isinstance(out, (tuple, list)) else [out]


def latencies_ms(models: Sequence[torch.nn.Module], x: torch.Tensor,
                 repeat: int) -> List[float]:
    """Median wall time (ms) of ``repeat`` forwards of each model.

    The models take turns, so load from other processes hits both alike.
    """
    for model in models:
        model(x, mode='tensor')  # warm-up
    times = [[] for _ in models]
    for _ in range(max(repeat, 1)):
        for model, spent in zip(models, times):
            start = time.perf_counter()
            model(x, mode='tensor')
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def exported_config(cfg: Config, adapter_cfg) -> Config:
    """``cfg`` with the backbone's new adapter and no pretrained-file loading."""
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.adapter = adapter_cfg
    # The exported checkpoint holds every weight; loading SAM again at init
    # would only need the file (and would overwrite a folded qkv).
    for part in ('backbone', 'decode_head'):
        if isinstance(cfg.model.get(part), dict) and 'checkpoint' in cfg.model[part]:
            cfg.model[part].checkpoint = None
    return cfg


def write_adapter_file(cfg: Config, model: torch.nn.Module, args) -> None:
    """``--mode adapters``: the checkpoint's trainable tensors, as safetensors."""
    missing = [p for p in base_checkpoints(cfg.model) if not osp.isfile(p)]
    if missing:
        raise SystemExit(f'base checkpoint(s) {missing} of the config do not exist; the '
                         'adapter file records their sha256, so point the config at them '
                         '(--cfg-options sam_checkpoint=... model.backbone.checkpoint=...).')
    tensors = adapter_state_dict(model)
    path = save_adapters(osp.join(args.out, 'adapters.safetensors'), tensors, cfg.model,
                         source=osp.basename(args.checkpoint))
    size = osp.getsize(path)
    print(f'wrote {len(tensors)} trainable tensors ({size / 2**20:.2f} MiB, '
          f'{size / max(osp.getsize(args.checkpoint), 1):.1%} of the checkpoint) to {path}')


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if 'backbone' not in cfg.model:
        raise SystemExit(f'{args.config}: model has no backbone; the exporter '
                         'converts the adapters of model.backbone.')
    init_default_scope(cfg.get('default_scope', 'mmseg'))

    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True,
                    logger='silent')
    model.eval()
    if args.mode == 'adapters':
        write_adapter_file(cfg, model, args)
        return
    exported = copy.deepcopy(model)
    adapter_cfg = export_adapters(exported.backbone, args.mode, args.topk)

    os.makedirs(args.out, exist_ok=True)
    h, w = input_shape(cfg, args.shape)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        diff = max((a - b).abs().max().item()
                   for a, b in zip(outputs(model, x), outputs(exported, x)))
        before, after = latencies_ms([model, exported], x, args.repeat)

    ckpt_path = osp.join(args.out, 'exported.pth')
    cfg_path = osp.join(args.out, 'exported_config.py')
    meta = dict(mode=args.mode, topk=args.topk, source=args.checkpoint,
                config=args.config, max_abs_diff=diff,
                mmseg_naslora_version=mmseg_naslora.__version__)
    torch.save(dict(meta=meta, state_dict=exported.state_dict()), ckpt_path)
    exported_config(cfg, adapter_cfg).dump(cfg_path)

    print(f'adapter: {cfg.model.backbone.get("adapter")} -> {adapter_cfg}')
    print(f'max abs output difference on a random {h}x{w} input: {diff:.3e}')
    print(f'CPU latency (median of {args.repeat}): original {before:.1f} ms, '
          f'exported {after:.1f} ms')
    print(f'wrote {ckpt_path} and {cfg_path}')


if __name__ == '__main__':
    main()

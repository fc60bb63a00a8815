"""Export a trained adapter model to its inference form.

    python tools/export.py CONFIG CHECKPOINT --mode {fold,collapse,topk} \
        [--topk K] --out OUT_DIR [--shape H W] [--cfg-options ...]
    python tools/export.py CONFIG CHECKPOINT --mode adapters --out OUT_DIR

Writes ``OUT_DIR/exported.pth`` and ``OUT_DIR/exported_config.py`` (run them
with ``tools/test.py``). Before that it prints, for every mode that applies
to the model (and top-k for k = 1..3 and ``--topk``), the relative error
``‖y' - y‖ / ‖y‖`` of the exported model's logits on ``--num-inputs`` images
of the config's test set (random inputs when the data is not there, which
it says), and the CPU latency of the original and the exported model. The
conversion is :func:`mmseg_naslora.models.adapters.export.export_adapters`.

``--mode adapters`` instead writes ``OUT_DIR/adapters.safetensors``: the
trained tensors of the checkpoint only, to share and to load onto the base
SAM checkpoint with ``tools/test.py CONFIG OUT_DIR/adapters.safetensors``
(:mod:`mmseg_naslora.checkpoint.adapter_file`).
"""
import argparse
import copy
import os
import os.path as osp
import statistics
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from mmseg.registry import DATASETS, MODELS

import mmseg_naslora  # noqa: F401  (registers modules and the checkpoint loader fix)
from mmseg_naslora.checkpoint.adapter_file import (adapter_state_dict, base_checkpoints,
                                                   load_adapter_file, save_adapters)
from mmseg_naslora.checkpoint.atomic_io import atomic_torch_save, atomic_write_bytes
from mmseg_naslora.models.adapters.export import EXPORT_MODES, export_adapters
from mmseg_naslora.utils.timing import timed_in_turns


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
    parser.add_argument('--num-inputs', type=int, default=4,
                        help='test-set images on which the export error is measured')
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


def check_inputs(cfg: Config, model: torch.nn.Module, count: int,
                 shape: Tuple[int, int]) -> Tuple[List[torch.Tensor], str]:
    """Up to ``count`` preprocessed test images, or random ones if there are none.

    Returns:
        tuple: The inputs (``(1, 3, H, W)`` each) and a phrase saying what they are.
    """
    loader_cfg = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    try:
        if not loader_cfg:
            raise LookupError('the config has no test_dataloader')
        dataset = DATASETS.build(loader_cfg['dataset'])
        inputs = []
        for i in range(min(count, len(dataset))):
            batch = pseudo_collate([dataset[i]])
            inputs.append(model.data_preprocessor(batch, False)['inputs'])
        if inputs:
            return inputs, f'{len(inputs)} test images of {loader_cfg["dataset"]["type"]}'
        reason = 'the test set is empty'
    except Exception as error:  # no data here: say so, and still check
        reason = f'no test data ({type(error).__name__}: {str(error).splitlines()[0][:120]})'
    generator = torch.Generator().manual_seed(0)
    return ([torch.randn(1, 3, *shape, generator=generator) for _ in range(count)],
            f'{count} random {shape[0]}x{shape[1]} inputs ({reason})')


def relative_error(model: torch.nn.Module, exported: torch.nn.Module,
                   inputs: Sequence[torch.Tensor]) -> float:
    """``‖y' - y‖ / ‖y‖`` over all logits of ``inputs``."""
    diff = norm = 0.
    with torch.no_grad():
        for x in inputs:
            for a, b in zip(outputs(model, x), outputs(exported, x)):
                diff += (b.double() - a.double()).square().sum().item()
                norm += a.double().square().sum().item()
    return (diff / max(norm, 1e-30))**0.5


def mode_errors(model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                topk: Optional[int]) -> Dict[str, str]:
    """The relative error of every export mode (or why it does not apply)."""
    trials = [('fold', None), ('collapse', None)]
    trials += [('topk', k) for k in sorted({1, 2, 3} | ({topk} if topk else set()))]
    errors = {}
    for mode, k in trials:
        label = mode if k is None else f'topk {k}'
        exported = copy.deepcopy(model)
        try:
            export_adapters(exported.backbone, mode, k)
        except ValueError as error:
            reason = str(error).split(';')[0]
            errors[label] = f'n/a ({reason[:117] + "..." if len(reason) > 120 else reason})'
            continue
        errors[label] = f'{relative_error(model, exported, inputs):.2e}'
    return errors


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


def load_trained(model: torch.nn.Module, cfg: Config, config: str, path: str) -> None:
    """Load a training checkpoint, or an adapter file onto the config's base SAM.

    A checkpoint that does not fit the model stops with the counts and a few
    of the missing and unexpected keys, not mmengine's full key lists.
    """
    if not osp.isfile(path):
        raise SystemExit(f'checkpoint {path} does not exist.')
    if path.endswith('.safetensors'):
        try:
            load_adapter_file(model, path)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        return
    try:
        load_checkpoint(model, path, map_location='cpu', strict=True, logger='silent')
    except RuntimeError as error:
        if 'state_dict' not in str(error):
            raise
        state = _load_checkpoint(path, map_location='cpu')
        state = state.get('state_dict', state)
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        raise SystemExit(
            f'{path} does not fit the model of {config}: {len(missing)} keys of the model '
            f'are missing from it (e.g. {missing[:3]}), {len(unexpected)} of its keys are '
            f'not in the model (e.g. {unexpected[:3]}) and {len(shapes)} differ in shape '
            f'(e.g. {shapes[:3]}); pass the config this checkpoint was trained with (its '
            'work dir holds a copy).') from None


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
    load_trained(model, cfg, args.config, args.checkpoint)
    model.eval()
    if args.mode == 'adapters':
        write_adapter_file(cfg, model, args)
        return
    exported = copy.deepcopy(model)
    try:
        adapter_cfg = export_adapters(exported.backbone, args.mode, args.topk)
    except ValueError as error:
        raise SystemExit(f'{args.config}: cannot export {args.checkpoint} with '
                         f'--mode {args.mode}: {error}') from None

    os.makedirs(args.out, exist_ok=True)
    h, w = input_shape(cfg, args.shape)
    inputs, what = check_inputs(cfg, model, args.num_inputs, (h, w))
    print(f'relative error of each export mode on {what}:')
    for label, error in mode_errors(model, inputs, args.topk).items():
        print(f'  {label:<9} {error}')
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        diff = max((a - b).abs().max().item()
                   for a, b in zip(outputs(model, x), outputs(exported, x)))
        # In turns, so load from other processes hits both alike.
        before, after = (1e3 * statistics.median(t) for t in timed_in_turns(
            [partial(model, x, mode='tensor'), partial(exported, x, mode='tensor')],
            args.repeat))
    error = relative_error(model, exported, inputs)

    ckpt_path = osp.join(args.out, 'exported.pth')
    cfg_path = osp.join(args.out, 'exported_config.py')
    meta = dict(mode=args.mode, topk=args.topk, source=args.checkpoint,
                config=args.config, max_abs_diff=diff, relative_error=error,
                mmseg_naslora_version=mmseg_naslora.__version__)
    # Temp file, fsync, rename: a failed re-export (disk full) keeps the previous one.
    atomic_torch_save(dict(meta=meta, state_dict=exported.state_dict()), ckpt_path)
    atomic_write_bytes(cfg_path, exported_config(cfg, adapter_cfg).pretty_text.encode())

    print(f'adapter: {cfg.model.backbone.get("adapter")} -> {adapter_cfg}')
    print(f'max abs output difference on a random {h}x{w} input: {diff:.3e}')
    print(f'CPU latency (median of {args.repeat}): original {before:.1f} ms, '
          f'exported {after:.1f} ms')
    print(f'wrote {ckpt_path} and {cfg_path}')


if __name__ == '__main__':
    main()

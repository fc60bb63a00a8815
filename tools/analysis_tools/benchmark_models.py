"""The methods, models, batches and command line shared by the benchmark scripts.

Every method is a model config of ``configs/_base_/models`` (the one its
training configs inherit) with the overrides a benchmark needs: the
``--arch`` backbone at ``--size``, no pretrained checkpoint (weights are
random: timings, memory and FLOPs do not depend on them), and the method's
NAS stage. On a backbone family other than the method's config (LiteMedSAM,
SAM2), the method's segmentor, adapter and loss go onto that family's
backbone and head from its own base config.

The scripts: ``benchmark.py`` (time, memory, FLOPs, export),
``fake_memory.py`` (GPU memory on fake tensors), ``profile_step.py``
(torch.profiler) and ``benchmark_loss.py`` (the set loss).
"""
import argparse
import copy
import json
import os
import os.path as osp
import resource
import sys
from collections import OrderedDict
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import mmseg_naslora  # noqa: F401  (registers the modules)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODEL_CONFIGS = osp.join(REPO_ROOT, 'configs', '_base_', 'models')
#: The optimisers of every row: the NAS schedules' (AdamW weights, Adam α), which
#: NASOptimWrapperConstructor turns into a plain wrapper for α-free models.
OPTIM_CONFIG = osp.join(REPO_ROOT, 'configs', '_base_', 'schedules', 'schedule_nas_2k.py')

#: ``--arch`` presets: ``(backbone family, backbone arch)``; None: the tiny test model.
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
#: The base model config of each backbone family.
FAMILY_CONFIGS = dict(sam='sam_vit-b_lora.py', tinyvit='litemedsam_lora.py',
                      sam2='sam2_hiera-l_lora.py')
# The tiny test models of tests/conftest.py and tests/sam2_tiny.py.
TINY_SAM = dict(embed_dims=32, depth=2, num_heads=2, global_attn_indexes=(1, ))
TINY_HIERA = dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3, ),
                  window_spec=(4, 2, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4))
TINY_HEAD = dict(in_channels=32, channels=32, transformer_mlp_dim=64,
                 transformer_num_heads=2, iou_head_hidden_dim=32)

_LINEAR_PRIMITIVES = ['none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                      'dil_conv_3x3', 'dil_conv_5x5']
#: name -> label, base model config, overrides (``adapter`` merges into the
#: config's; None removes it), export mode, SAM2 only.
METHODS = OrderedDict([
    ('frozen', dict(label='frozen encoder (decoder only)', config='sam_vit-b_lora.py',
                    adapter=None)),
    ('full', dict(label='full fine-tune (encoder unfrozen)', config='sam_vit-b_lora.py',
                  adapter=None, freeze=False)),
    ('lora', dict(label='LoRA r=3', config='sam_vit-b_lora.py', export='fold')),
    ('conv_lora', dict(label='Conv-LoRA r=3', config='sam_vit-b_convlora.py')),
    ('nas_lora_s1', dict(label='NAS-LoRA r=3, stage 1 (weights)',
                         config='sam_vit-b_naslora.py', nas_stage='warmup', export='topk')),
    ('nas_lora_s2', dict(label='NAS-LoRA r=3, stage 2 (α + weights, joint step)',
                         config='sam_vit-b_naslora.py', nas_stage='search', export='topk')),
    ('nas_lora_s2_alt', dict(label='NAS-LoRA r=3, stage 2 (alternating step)',
                             config='sam_vit-b_naslora.py', nas_stage='search',
                             search_step='alternate', export='topk')),
    ('nas_lora_linbn_s2', dict(label='NAS-LoRA linear+BN ops (collapsible), stage 2',
                               config='sam_vit-b_naslora.py', nas_stage='search',
                               adapter=dict(op_variant='linear_bn',
                                            primitives=_LINEAR_PRIMITIVES),
                               export='collapse')),
    ('nas_pc_lora_s2', dict(label='NAS-PC-LoRA P=2/3, stage 2', config='sam_vit-b_naspclora.py',
                            nas_stage='search', export='topk')),
    ('sam2lora', dict(label='SAM2LoRA r=64 (enc+dec)', config='sam2_hiera-l_lora.py',
                      sam2=True, export='fold')),
])
RANDOM_WEIGHTS_NOTE = ('random weights (no checkpoint): timings, memory and FLOPs do not '
                       'depend on the values; export differences are on random adapters')


# Command line -----------------------------------------------------------------
def model_parser(description: str, methods: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every model benchmark takes (model, input, ``--out``).

    Args:
        description (str): The script's one-line description.
        methods (bool): Add ``--methods`` (the scripts that measure several).
            Defaults to True.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--arch', default='vit-b',
                        help=f'one of {list(ARCHS)} or a SAMViT arch dict as JSON, e.g. '
                        '\'{"embed_dims":384,"depth":6,"num_heads":6,'
                        '"global_attn_indexes":[5]}\'')
    parser.add_argument('--sam2-arch', default=None,
                        help='SAM2 arch of the sam2lora row when --arch is not a SAM2 one '
                        '(default: sam2-hiera-t; tiny-sam2 with --quick)')
    parser.add_argument('--size', type=int, default=512, help='square input side')
    parser.add_argument('--window-size', type=int, default=None,
                        help='SAMViT window (default 14; 2 for the tiny archs)')
    parser.add_argument('--batch-size', type=int, default=1)
    if methods:
        parser.add_argument('--methods', nargs='+', default=None, choices=list(METHODS),
                            help='subset of methods (default: all; sam2lora needs sam2)')
    parser.add_argument('--with-cp', action='store_true', help='activation checkpointing')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--quick', action='store_true',
                        help='tiny arch at 64x64, batch 2 (tests)')
    parser.add_argument('--out', help='write the JSON results here')
    # What build() reads; the scripts that time on a GPU or in bf16 add the flags.
    parser.set_defaults(device='cpu', amp=False)
    return parser


def parse_model_args(parser: argparse.ArgumentParser,
                     argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv``, apply ``--quick`` and ``--threads``, check ``--device cuda``."""
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.batch_size = 'tiny', 64, 2
        args.sam2_arch = args.sam2_arch or 'tiny-sam2'
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device here; use --device cpu.')
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def sam2_available() -> bool:
    try:
        import sam2  # noqa: F401
    except ImportError:
        return False
    return True


def selected_methods(args: argparse.Namespace) -> List[str]:
    """``--methods`` (default: all), without sam2lora when ``sam2`` is not installed."""
    methods = list(args.methods or METHODS)
    if 'sam2lora' in methods and not sam2_available():
        print('sam2 is not importable: the sam2lora row is skipped (see docs/sam2lora.md).')
        methods.remove('sam2lora')
    return methods


def write_result(result: dict, table: str, args: argparse.Namespace) -> None:
    """Print ``table``; write ``result`` to ``--out`` and ``table`` to ``--markdown``."""
    print(table)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)


def markdown_table(caption: str, header: Sequence[str],
                   rows: Iterable[Sequence[str]]) -> str:
    """A caption paragraph and a markdown table of ``header`` and ``rows`` (cell strings)."""
    lines = [caption, '', f"| {' | '.join(header)} |", '|' + '---|' * len(header)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return '\n'.join(lines) + '\n'


def fmt(value, spec: str = '.0f') -> str:
    """``value`` formatted by ``spec``, or a dash for None."""
    return '—' if value is None else format(value, spec)


def max_rss_bytes() -> int:
    """Peak resident set size of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # Linux reports KiB


# Model ------------------------------------------------------------------------
def _arch_spec(arch: str, window: Optional[int]) -> Tuple[str, object, int]:
    """``(family, backbone arch, SAMViT window)`` of an ``--arch`` value."""
    if arch in ARCHS:
        family, name = ARCHS[arch]
        if name is None:  # tiny presets
            return family, TINY_SAM if family == 'sam' else TINY_HIERA, window or 2
        return family, name, window or 14
    try:
        return 'sam', json.loads(arch), window or 14
    except json.JSONDecodeError:
        raise SystemExit(f'--arch {arch!r} is neither one of {list(ARCHS)} nor a JSON '
                         'SAMViT arch dict.')


def model_config(args: argparse.Namespace, method: str) -> Tuple[dict, str]:
    """The model config of ``method`` on ``args.arch``, and the backbone's name.

    Args:
        args (argparse.Namespace): The parsed command line (``--arch``,
            ``--sam2-arch``, ``--size``, ``--window-size``, ``--with-cp``).
        method (str): A key of :data:`METHODS`.

    Returns:
        tuple[dict, str]: The config to build and the ``--arch`` it runs on.
    """
    spec = METHODS[method]
    arch = args.arch
    family, backbone_arch, window = _arch_spec(arch, args.window_size)
    if spec.get('sam2') and family != 'sam2':
        arch = args.sam2_arch or 'sam2-hiera-t'
        family, backbone_arch, window = _arch_spec(arch, args.window_size)
        if family != 'sam2':
            raise SystemExit(f'--sam2-arch {arch!r} is not a SAM2 arch.')
    model = copy.deepcopy(Config.fromfile(osp.join(MODEL_CONFIGS, spec['config'])).model)
    if spec['config'] != FAMILY_CONFIGS[family]:
        # Another family: the method's segmentor, adapter and loss on its backbone and head.
        base = Config.fromfile(osp.join(MODEL_CONFIGS, FAMILY_CONFIGS[family])).model
        base.backbone.adapter = model.backbone.get('adapter')
        base.decode_head.pop('decoder_adapter', None)
        base.decode_head.pop('freeze_decoder', None)
        base.decode_head.loss_decode = model.decode_head.loss_decode
        for part in ('backbone', 'decode_head', 'data_preprocessor'):
            model[part] = base[part]  # replaced, not merged (ConfigDict.update merges)
    backbone, head = model.backbone, model.decode_head
    if 'adapter' in spec:
        backbone.adapter = None if spec['adapter'] is None else dict(
            backbone.adapter, **spec['adapter'])
    tiny = backbone_arch in (TINY_SAM, TINY_HIERA)
    backbone.update(arch=backbone_arch, checkpoint=None, freeze=spec.get('freeze', True),
                    with_cp=args.with_cp)
    head.checkpoint = None
    if tiny:
        head.update(TINY_HEAD)
    if family != 'sam2':  # SAM2Hiera's input size is free
        backbone.img_size = args.size
    if family != 'tinyvit':
        backbone.out_channels = head.channels
    if family == 'sam':
        backbone.window_size = window
    for key in ('nas_stage', 'search_step'):
        if key in spec:
            model[key] = spec[key]
    model.data_preprocessor.size = (args.size, args.size)
    return model, arch


def build(args: argparse.Namespace, method: str, gpu_like: bool = False,
          wrapper: Optional[dict] = None):
    """``(model, optim_wrapper, batch, backbone name)`` on ``args.device``.

    The optimisers are the ``optim_wrapper`` of :data:`OPTIM_CONFIG`.

    Args:
        args (argparse.Namespace): The parsed command line.
        method (str): A key of :data:`METHODS`.
        gpu_like (bool): Build on the current default device (fake tensors
            cannot be moved by ``.to``) and give AdamW/Adam ``foreach=True``,
            their default for CUDA parameters (the CPU default is the
            per-tensor loop, with fewer temporaries). Defaults to False.
        wrapper (dict, optional): Top-level ``optim_wrapper`` keys, applied to
            both wrappers (e.g. an AMP ``type``). Defaults to None.
    """
    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    cfg, name = model_config(args, method)
    model = MODELS.build(cfg)
    if not gpu_like:
        model = model.to(args.device)
    with torch.no_grad():  # B = 0 would make every adapter (and its export) a no-op
        for pname, param in model.named_parameters():
            if 'lora_B' in pname:
                param.normal_(std=1e-2)
    optim = copy.deepcopy(Config.fromfile(OPTIM_CONFIG).optim_wrapper)
    optim.update(wrapper or {})
    if gpu_like:
        for sub in ('weights', 'alpha'):
            optim[sub].optimizer.foreach = True
    optim_wrapper = build_optim_wrapper(model, optim)
    assert isinstance(optim_wrapper, OptimWrapper) or 'weights' in optim_wrapper
    return model, optim_wrapper, make_batch(args.batch_size, args.size), name


def optimizers(optim_wrapper) -> List[torch.optim.Optimizer]:
    """The optimisers of a plain wrapper or of an ``OptimWrapperDict``."""
    if hasattr(optim_wrapper, 'items'):
        return [sub.optimizer for _, sub in optim_wrapper.items()]
    return [optim_wrapper.optimizer]


def make_batch(num: int, size: int, seed: int = 0) -> dict:
    """A collated batch of random uint8 images and binary masks."""
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


def batch_tensors(batch: dict) -> List[torch.Tensor]:
    """The images and ground-truth maps of a :func:`make_batch` batch."""
    tensors = list(batch['inputs'])
    for sample in batch['data_samples']:
        tensors += [v for v in sample.gt_sem_seg.values() if isinstance(v, torch.Tensor)]
    return tensors

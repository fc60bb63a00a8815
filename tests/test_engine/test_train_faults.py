"""The bad-input catalogue (docs/troubleshooting.md): one clear error, nothing written."""
import glob
import os
import os.path as osp
import uuid

import numpy as np
import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks

NAS_BASE = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'


def make_cfg(tmp_path, data_root, sam_path, base=None, extra=''):
    kw = dict(base=base) if base else {}
    path = tiny_config(str(tmp_path / 'cfg.py'), data_root, checkpoint=sam_path,
                       max_iters=2, extra=extra, **kw)
    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'vis_{uuid.uuid4().hex}'
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    add_reliability_hooks(cfg)
    return cfg


def assert_fails(cfg, error, *culprits, mode='train'):
    """Run ``cfg``; it must raise ``error`` naming every culprit and write no output."""
    with pytest.raises(error) as info:
        runner = Runner.from_cfg(cfg)
        getattr(runner, mode)()
    message = str(info.value)
    for culprit in culprits:
        assert culprit in message, (culprit, message)
    written = [p for pat in ('*.pth', '*.safetensors', 'last_checkpoint', 'preds*')
               for p in glob.glob(osp.join(cfg.work_dir, '**', pat), recursive=True)]
    assert written == []
    return message


def save_state(tmp_path, state, name='bad.pth'):
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


# Checkpoints -------------------------------------------------------------------
def test_checkpoint_of_another_size(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path)
    cfg.model.backbone.arch = dict(embed_dims=64, depth=2, num_heads=2, global_attn_indexes=(1, ))
    msg = assert_fails(cfg, ValueError, sam_path, 'does not fit ImageEncoderViT',
                       'expected (1, 4, 4, 64), found (1, 4, 4, 32)', 'width 32 and depth 2')
    assert 'hint' in msg


def test_vit_b_file_into_arch_l_names_the_right_arch():
    from mmseg_naslora.models.backbones.sam_vit import SAMViT
    # The hint reads the width and depth of the file (ViT-B: 768, 12 blocks).
    state = {'patch_embed.proj.weight': torch.zeros(768, 3, 16, 16)}
    state.update({f'blocks.{i}.norm1.weight': torch.zeros(768) for i in range(12)})
    hint = SAMViT._arch_hint(None, state)
    assert hint == ("hint: the checkpoint has width 768 and depth 12, which is SAM ViT-B; "
                    "set arch='b'.")


@pytest.mark.parametrize('family,key,hint', [
    ('sam2', 'image_encoder.trunk.blocks.0.attn.qkv.weight', "type='SAM2Hiera'"),
    ('litemedsam', 'image_encoder.layers.0.blocks.0.attn.qkv.weight', "type='SAMTinyViT'")])
def test_checkpoint_of_another_family(tmp_path, binary_dataset, official_sam, family, key, hint):
    sam, _ = official_sam
    state = {k: v for k, v in sam.state_dict().items() if not k.startswith('image_encoder.')}
    state[key] = torch.zeros(96, 32)
    path = save_state(tmp_path, state, f'{family}.pth')
    cfg = make_cfg(tmp_path, binary_dataset, path)
    assert_fails(cfg, ValueError, path, 'does not fit ImageEncoderViT', hint)


def test_checkpoint_without_image_encoder(tmp_path, binary_dataset, official_sam):
    sam, _ = official_sam
    path = save_state(tmp_path, {k: v for k, v in sam.state_dict().items()
                                 if not k.startswith('image_encoder.')})
    cfg = make_cfg(tmp_path, binary_dataset, path)
    assert_fails(cfg, KeyError, path, 'no image_encoder.* keys', 'official format')


# Data ----------------------------------------------------------------------------
def test_missing_data_root(tmp_path, official_sam):
    cfg = make_cfg(tmp_path, str(tmp_path / 'nowhere'), official_sam[1])
    assert_fails(cfg, FileNotFoundError, 'nowhere/img_dir/train', 'does not exist',
                 'tools/dataset_converters/kvasir.py')


def test_empty_split(tmp_path, binary_dataset, official_sam):
    for f in glob.glob(osp.join(binary_dataset, 'img_dir', 'train', '*')):
        os.remove(f)
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    assert_fails(cfg, FileNotFoundError, 'img_dir/train', 'no "*.jpg" images')


def test_corrupt_image(tmp_path, binary_dataset, official_sam):
    bad = osp.join(binary_dataset, 'img_dir', 'train', '000.jpg')
    with open(bad, 'wb') as f:
        f.write(b'not a jpeg at all')
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    assert_fails(cfg, ValueError, bad, 'corrupt or not an image')


def test_corrupt_image_outside_the_sample_names_the_file(tmp_path, binary_dataset):
    from mmseg_naslora.datasets.kvasir import KvasirSEGDataset
    bad = osp.join(binary_dataset, 'img_dir', 'train', '003.jpg')
    open(bad, 'wb').close()
    dataset = KvasirSEGDataset(data_root=binary_dataset,
                               data_prefix=dict(img_path='img_dir/train',
                                                seg_map_path='ann_dir/train'),
                               pipeline=[dict(type='LoadImageFromFile')])
    with pytest.raises(RuntimeError, match='003.jpg') as info:
        dataset[3]
    assert 'corrupt' in str(info.value)


def test_mask_values_0_255(tmp_path, binary_dataset, official_sam):
    mask = osp.join(binary_dataset, 'ann_dir', 'train', '000.png')
    Image.fromarray((np.asarray(Image.open(mask)) * 255).astype(np.uint8)).save(mask)
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    assert_fails(cfg, ValueError, mask, 'only 0 and 255', '[0, 2)', 'ignore_index=255',
                 'tools/dataset_converters/kvasir.py')


def test_image_mask_size_mismatch(tmp_path, binary_dataset, official_sam):
    mask = osp.join(binary_dataset, 'ann_dir', 'val', '002.png')
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    assert_fails(cfg, ValueError, mask, '002.jpg', 'is 80x64', 'is 32x32')


def test_mask_check_in_standalone_test(tmp_path, binary_dataset, official_sam):
    mask = osp.join(binary_dataset, 'ann_dir', 'val', '001.png')
    Image.fromarray(np.full((64, 80), 7, np.uint8)).save(mask)
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    assert_fails(cfg, ValueError, mask, 'values [7]', mode='test')


# Config ----------------------------------------------------------------------------
def test_crop_size_not_multiple_of_16(tmp_path, binary_dataset, official_sam):
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    cfg.model.data_preprocessor.size = (60, 60)
    assert_fails(cfg, ValueError, 'model.data_preprocessor.size = (60, 60)',
                 'multiple of 16', 'SAMViT')


def test_num_classes_disagrees_with_dataset(tmp_path, binary_dataset, official_sam):
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    cfg.model.decode_head.update(num_classes=3, out_channels=3, mode='per_class',
                                 loss_decode=dict(type='CrossEntropyLoss'))
    assert_fails(cfg, ValueError, 'model.decode_head.num_classes=3', 'KvasirSEGDataset',
                 "('background', 'polyp')", 'num_classes=2')


def test_nas_config_without_alpha_optimizer(tmp_path, binary_dataset, official_sam):
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1], base=NAS_BASE)
    cfg.optim_wrapper = dict(constructor='NASOptimWrapperConstructor',
                             weights=dict(type='OptimWrapper',
                                          optimizer=dict(type='AdamW', lr=1e-3)))
    cfg.param_scheduler = dict(weights=[], alpha=[])
    assert_fails(cfg, KeyError, 'architecture parameters', 'no `alpha` entry',
                 'optim_wrapper.alpha')


def test_warmup_longer_than_training_warns(tmp_path, binary_dataset, official_sam):
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1], base=NAS_BASE)
    cfg.optim_wrapper = dict(constructor='NASOptimWrapperConstructor',
                             weights=dict(type='OptimWrapper',
                                          optimizer=dict(type='AdamW', lr=1e-3)),
                             alpha=dict(type='OptimWrapper',
                                        optimizer=dict(type='Adam', lr=1e-3)))
    cfg.param_scheduler = dict(weights=[], alpha=[])
    cfg.custom_hooks = [dict(type='NASStageHook', warmup=500, by_epoch=False),
                        dict(type='NASAlphaLoggerHook', interval=1)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    with open(glob.glob(osp.join(cfg.work_dir, '*', '*.log'))[0]) as f:
        log = f.read()
    assert 'warmup T_B=500 iters >= the training length (2 iters)' in log
    assert 'WARNING' in log.split('warmup T_B=500')[0].splitlines()[-1]


def test_nas_stage_hook_with_the_old_logging_arguments(tmp_path, binary_dataset, official_sam):
    """A config from before the split: the statistics moved to NASAlphaLoggerHook."""
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1], base=NAS_BASE)
    cfg.custom_hooks = [dict(type='NASStageHook', warmup=1, by_epoch=False, interval=10,
                             plot=False)]
    assert_fails(cfg, TypeError, 'NASStageHook no longer takes', "['interval', 'plot']",
                 "dict(type='NASAlphaLoggerHook', interval=10, plot=False)", 'custom_hooks')

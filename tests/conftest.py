"""Shared fixtures: tiny SAM architectures, official-format checkpoints and a generated dataset."""
import os
import os.path as osp
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# A 2-block SAM ViT: block 0 windowed (window 2), block 1 global.
TINY_ARCH = dict(embed_dims=32, depth=2, num_heads=2, global_attn_indexes=(1, ))
TINY_WINDOW = 2
TINY_DECODER = dict(in_channels=32, channels=32, transformer_mlp_dim=64,
                    transformer_num_heads=2, iou_head_hidden_dim=32)


def shared_data_root(name: str) -> str:
    """Real dataset folder: $NASLORA_DATA (default ../shared/data) / name."""
    base = os.environ.get('NASLORA_DATA', osp.join(REPO_ROOT, '..', 'shared', 'data'))
    return osp.abspath(osp.join(base, name))


def build_official_sam(img_size: int = 64, arch: dict = TINY_ARCH, window: int = TINY_WINDOW,
                       decoder: dict = TINY_DECODER) -> nn.Module:
    """A random-init ``segment_anything.Sam`` whose state dict has the official key format."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)
    torch.manual_seed(0)
    dim = decoder['channels']
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=arch['embed_dims'], depth=arch['depth'],
            num_heads=arch['num_heads'], global_attn_indexes=arch['global_attn_indexes'],
            window_size=window, out_chans=dim, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img_size // 16, ) * 2,
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
            iou_head_hidden_dim=decoder['iou_head_hidden_dim'],
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim,
                                          mlp_dim=decoder['transformer_mlp_dim'],
                                          num_heads=decoder['transformer_num_heads'])))
    # Official checkpoints have non-zero relative positions; so must the test file.
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if 'rel_pos' in name or 'pos_embed' in name:
                p.normal_(0, 0.02)
    return sam.eval()


@pytest.fixture(scope='session')
def official_sam(tmp_path_factory):
    """``(sam, path)``: a tiny random SAM and its state dict saved like the official .pth."""
    sam = build_official_sam()
    path = str(tmp_path_factory.mktemp('ckpt') / 'sam_tiny.pth')
    torch.save(sam.state_dict(), path)
    return sam, path


def make_binary_dataset(root: str, splits=(('train', 6), ('val', 3)), size=(64, 80),
                        seed: int = 0) -> str:
    """Write a Kvasir-style layout of bright discs on noise, masks 0/1."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for split, count in splits:
        os.makedirs(osp.join(root, 'img_dir', split), exist_ok=True)
        os.makedirs(osp.join(root, 'ann_dir', split), exist_ok=True)
        for i in range(count):
            cy, cx, r = rng.integers(16, h - 16), rng.integers(16, w - 16), rng.integers(6, 14)
            mask = ((yy - cy)**2 + (xx - cx)**2 < r**2).astype(np.uint8)
            img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
            img[mask.astype(bool)] += 150
            Image.fromarray(img).save(osp.join(root, 'img_dir', split, f'{i:03d}.jpg'))
            Image.fromarray(mask).save(osp.join(root, 'ann_dir', split, f'{i:03d}.png'))
    return root


@pytest.fixture
def binary_dataset(tmp_path):
    return make_binary_dataset(str(tmp_path / 'data'))


def tiny_config(path: str, data_root: str, base: str = 'configs/lora/lora_sam-vit-b_1xb4-20k_kvasir-1024x1024.py',
                checkpoint=None, max_iters: int = 4, val_indices=None, extra: str = '') -> str:
    """Write a config inheriting ``base`` with a tiny SAM at 64x64 and return its path."""
    text = f'''
_base_ = [{osp.join(REPO_ROOT, base)!r}]
crop_size = (64, 64)
data_root = {data_root!r}
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size=crop_size, size_divisor=None)),
    backbone=dict(arch=dict(_delete_=True, **{TINY_ARCH!r}), img_size=64,
                  window_size={TINY_WINDOW}, out_channels=32, checkpoint={checkpoint!r}),
    decode_head=dict(checkpoint={checkpoint!r}, **{TINY_DECODER!r}))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline,
                                   indices={val_indices!r}))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = []
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_best=None),
                     visualization=dict(type='SegVisualizationHook', draw=False))
{extra}
'''
    with open(path, 'w') as f:
        f.write(text)
    return path


@pytest.fixture(autouse=True, scope='session')
def mmseg_scope():
    """Build registry configs in mmseg's scope, as the runner does."""
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)

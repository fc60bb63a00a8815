"""The search finds a planted op: the target is made by one candidate op, α must rank it first.

A tiny token model (one frozen linear map adapted by NAS-LoRA) regresses
``y = B*·O*(A*·x)`` on the token grid, where ``O*`` is the planted op: the
DARTS op of that name without its BN (plain pooling, or a fixed random
dilated convolution), ``A*`` the student's frozen ``A`` and ``B*`` a fixed
random map. The student trains by the real code path: mmengine's Runner,
``NASOptimWrapperConstructor``, ``NASEncoderDecoder.train_step`` (joint and
alternating) and ``NASStageHook``; only the backbone and the head are test
modules. After the warm-up and a few hundred search iterations the planted
op must hold the largest softmax(α), well above uniform.
"""
import uuid

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.runner import Runner
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch.utils.data import Dataset

from mmseg_naslora.models.adapters import arch_layers, inject_adapters

CHANNELS, RANK, GRID = 16, 4, 10
WARMUP, MAX_ITERS = 60, 360


@MODELS.register_module(force=True)
class PlantedTokenBackbone(BaseModule):
    """``(N, C, H, W)`` inputs as an ``(N, H, W, C)`` token grid through one adapted linear."""

    def __init__(self, adapter: dict, a_init: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(CHANNELS, CHANNELS, bias=False)
        nn.init.zeros_(self.proj.weight)  # the whole output is the adapter's
        inject_adapters(self, adapter, target=r'^proj$')
        with torch.no_grad():
            self.proj.lora_A.weight.copy_(a_init)
        self.proj.lora_A.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor):
        return [self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)]


@MODELS.register_module(force=True)
class TokenRegressionHead(BaseModule):
    """Mean squared error between the features and the target map in ``gt_sem_seg``."""

    align_corners = False
    num_classes = out_channels = CHANNELS

    def loss(self, inputs, data_samples, train_cfg) -> dict:
        target = torch.stack([s.gt_sem_seg.data for s in data_samples])
        return dict(loss_mse=F.mse_loss(inputs[0], target))


def planted_op(name: str, channels: int) -> nn.Module:
    """The target's op: the DARTS op ``name`` without BN (fixed random weights)."""
    if name == 'avg_pool_3x3':
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == 'max_pool_3x3':
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == 'dil_conv_5x5':  # ReLU -> 5x5 dilation-2 depthwise -> pointwise
        depthwise = nn.Conv2d(channels, channels, 5, padding=4, dilation=2, groups=channels,
                              bias=False)
        pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        return nn.Sequential(nn.ReLU(), depthwise, pointwise).requires_grad_(False)
    raise KeyError(name)


class PlantedDataset(Dataset):
    """Gaussian token grids and their planted targets ``B*·O*(A*·x)``."""

    metainfo = dict(classes=[f'c{i}' for i in range(CHANNELS)])

    def __init__(self, op: nn.Module, a: torch.Tensor, b: torch.Tensor, num: int = 64) -> None:
        gen = torch.Generator().manual_seed(1)
        self.inputs = torch.randn(num, CHANNELS, GRID, GRID, generator=gen)
        with torch.no_grad():
            z = torch.einsum('rc,nchw->nrhw', a, self.inputs)
            y = torch.einsum('cr,nrhw->nchw', b, op(z))
        self.targets = y / y.std()

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=self.targets[index])
        sample.set_metainfo(dict(img_shape=(GRID, GRID), ori_shape=(GRID, GRID)))
        return dict(inputs=self.inputs[index], data_samples=sample)


def search(tmp_path, planted: str, search_step: str, flip_alpha_grad: bool = False):
    """Train the student through the Runner; returns its softmax(α) by op name."""
    torch.manual_seed(0)
    a = torch.randn(RANK, CHANNELS) / CHANNELS ** 0.5
    b = torch.randn(CHANNELS, RANK) / RANK ** 0.5
    dataset = PlantedDataset(planted_op(planted, RANK), a, b)
    runner = Runner(
        model=dict(
            type='NASEncoderDecoder',
            search_step=search_step,
            data_preprocessor=dict(type='SegDataPreProcessor', size=(GRID, GRID)),
            backbone=dict(type='PlantedTokenBackbone', a_init=a,
                          adapter=dict(type='NASLoRA', rank=RANK, lora_alpha=RANK)),
            decode_head=dict(type='TokenRegressionHead')),
        work_dir=str(tmp_path / f'{planted}_{search_step}'),
        experiment_name=f'planted_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=dataset, batch_size=8, num_workers=0,
                              sampler=dict(type='InfiniteSampler', shuffle=True),
                              collate_fn=dict(type='pseudo_collate')),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=MAX_ITERS),
        optim_wrapper=dict(
            constructor='NASOptimWrapperConstructor',
            weights=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-2)),
            alpha=dict(type='OptimWrapper',
                       optimizer=dict(type='Adam', lr=2e-2, betas=(0.5, 0.999),
                                      weight_decay=0.))),
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1000)),
        custom_hooks=[dict(type='NASStageHook', warmup=WARMUP, by_epoch=False)],
        visualizer=dict(type='Visualizer', name=f'vis_{uuid.uuid4().hex}'),
        randomness=dict(seed=0),
        default_scope='mmseg')
    (layer, ) = arch_layers(runner.model)
    if flip_alpha_grad:  # the mutation the test must catch
        layer.alpha.register_hook(lambda grad: -grad)
    runner.train()
    return dict(zip(layer.primitives, layer.weights.tolist()))


@pytest.mark.parametrize('search_step', ['joint', 'alternate'])
@pytest.mark.parametrize('planted', ['avg_pool_3x3', 'dil_conv_5x5'])
def test_search_ranks_the_planted_op_first(tmp_path, planted, search_step):
    weights = search(tmp_path, planted, search_step)
    ranked = sorted(weights, key=weights.get, reverse=True)
    assert ranked[0] == planted, weights
    assert weights[planted] > 2.5 / len(weights), weights  # well above uniform


def test_flipped_alpha_gradient_buries_the_planted_op(tmp_path):
    weights = search(tmp_path, 'avg_pool_3x3', 'joint', flip_alpha_grad=True)
    assert weights['avg_pool_3x3'] < 1 / len(weights), weights

"""Spatial bottlenecks keep SAM's window padding out (zero in, zero out, no statistics).

The reference layout is independent of the adapters: segment-anything's own
``window_partition`` pads and cuts the map, and each window's real part is
fed again as a grid of its own, which has no padding at all.
"""
import pytest
import torch
import torch.nn as nn
from mmseg.registry import MODELS
from segment_anything.modeling.image_encoder import window_partition

from mmseg_naslora.models.adapters.conv_bottleneck_lora import ConvBottleneckLoRA
from mmseg_naslora.models.adapters.conv_lora import ConvLoRA
from mmseg_naslora.models.adapters.inject import iter_adapters
from mmseg_naslora.models.adapters.lora import LoRA
from mmseg_naslora.models.adapters.nas_lora import NASLoRA

H, W, WIN, C = 6, 5, 4, 16  # 2x2 windows of 4x4; real parts 4x4, 4x1, 2x4, 2x1


def build(kind: str, **kwargs) -> LoRA:
    torch.manual_seed(0)
    base = nn.Linear(C, 3 * C)
    if kind == 'conv_lora':
        layer = ConvLoRA(base, rank=3, num_experts=4, **kwargs)
    elif kind == 'conv_bottleneck':
        layer = ConvBottleneckLoRA(base, rank=3, kernel_size=5, bias=True, **kwargs)
    else:
        layer = NASLoRA(base, rank=3, op_variant=kind, **kwargs)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if 'base_layer' not in name:
                p.normal_(std=0.5)
    return layer


def windows(x: torch.Tensor, fill: float) -> torch.Tensor:
    """SAM's ``window_partition`` of ``x`` (B, H, W, C), padded with ``fill``."""
    padded = torch.full((x.shape[0], 8, 8, C), fill)
    padded[:, :H, :W] = x
    return window_partition(padded, WIN)[0]


def real_part(index: int):
    i, j = divmod(index % 4, 2)
    return slice(0, min(WIN, H - i * WIN)), slice(0, min(WIN, W - j * WIN)), (i, j)


KINDS = [('darts', {}), ('linear_bn', dict(residual=True)), ('linear', dict(pc_ratio=2 / 3)),
         ('conv_lora', {}), ('conv_bottleneck', {})]


@pytest.mark.parametrize('kind,kwargs', KINDS)
def test_real_tokens_get_the_update_of_the_unpadded_grid(kind, kwargs):
    layer = build(kind, **kwargs)
    x = torch.randn(2, H, W, C)
    layer.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            layer.valid_size = (H, W)
            layer(windows(x, 3.))
    layer.eval()
    with torch.no_grad():
        layer.valid_size = (H, W)
        tiles = windows(x, 3.)
        update = layer(tiles) - layer.base_layer(tiles)
        layer.valid_size = None
        for n in range(tiles.shape[0]):
            rows, cols, (i, j) = real_part(n)
            b = n // 4
            own = x[b:b + 1, i * WIN:(i + 1) * WIN, j * WIN:(j + 1) * WIN]
            expected = layer(own) - layer.base_layer(own)
            assert (update[n, rows, cols] - expected[0]).abs().max() < 1e-5, (n, kind)
            padded = torch.ones(WIN, WIN, dtype=torch.bool)
            padded[rows, cols] = False
            assert torch.equal(update[n][padded], torch.zeros_like(update[n][padded]))


@pytest.mark.parametrize('kind,kwargs', KINDS[:4])
def test_padding_stays_out_of_training_statistics(kind, kwargs):
    x = torch.randn(2, H, W, C)
    outputs, stats = [], []
    for fill in (0., 50.):
        layer = build(kind, **kwargs).train()
        layer.valid_size = (H, W)
        tiles = windows(x, fill)
        torch.manual_seed(1)  # the same gate noise
        outputs.append((layer(tiles) - layer.base_layer(tiles)).detach())
        stats.append([b.clone() for b in layer.buffers()])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*stats))


@pytest.mark.parametrize('kind,kwargs', KINDS)
def test_mask_padding_false_keeps_the_padded_computation(kind, kwargs):
    """Unmasked (AutoGluon's Conv-LoRA): padded tokens flow through the bottleneck."""
    x = torch.randn(2, H, W, C)
    updates = []
    for fill in (0., 50.):
        layer = build(kind, mask_padding=False, **kwargs).eval()
        layer.valid_size = (H, W)
        tiles = windows(x, fill)
        updates.append(layer(tiles) - layer.base_layer(tiles))
    assert not torch.allclose(updates[0], updates[1], atol=1e-3)
    assert not torch.equal(updates[0][1, :, 1:], torch.zeros_like(updates[0][1, :, 1:]))


def test_padding_mask_follows_window_partition():
    layer = build('linear')
    layer.valid_size = (H, W)
    mask = layer.padding_mask(torch.zeros(8, WIN, WIN, 3))
    ones = window_partition(torch.ones(2, H, W, 1), WIN)[0]  # zero-padded by SAM
    assert torch.equal(mask, ones.bool())
    layer.valid_size = (8, 8)
    assert layer.padding_mask(torch.zeros(8, WIN, WIN, 3)) is None  # nothing padded
    layer.valid_size = (H, W)
    assert layer.padding_mask(torch.zeros(1, H, W, 3)) is None  # a global block
    with pytest.raises(ValueError, match='stale `valid_size`'):
        layer.padding_mask(torch.zeros(7, WIN, WIN, 3))


def test_sam_backbones_tell_adapters_the_unpadded_size():
    arch = dict(embed_dims=64, depth=4, num_heads=2, global_attn_indexes=(1, 3))
    vit = MODELS.build(dict(type='SAMViT', arch=arch, img_size=128, window_size=4,
                            out_channels=32, adapter=dict(type='NASLoRA', rank=3)))
    vit(torch.randn(1, 3, 80, 96))
    assert {a.valid_size for _, a in iter_adapters(vit)} == {(5, 6)}
    tiny = MODELS.build(dict(type='SAMTinyViT', img_size=64, adapter_blocks=[0, 2, 8],
                             adapter=dict(type='NASLoRA', rank=3)))
    with torch.no_grad():
        tiny(torch.randn(1, 3, 72, 88))
    # TinyViT stages 1-3 run at 1/2, 1/4, 1/4 of the input.
    assert [a.valid_size for _, a in iter_adapters(tiny)] == [(36, 44), (18, 22), (18, 22)]

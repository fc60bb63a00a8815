import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_naslora.models.adapters.ops import (LINEAR_PRIMITIVES, PRIMITIVES,
                                               ConvOp, Pool, build_op,
                                               kernel_size_of, pad_kernel)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(op: nn.Module) -> None:
    with torch.no_grad():
        for p in op.parameters():
            p.normal_(std=0.5)


@pytest.mark.parametrize('variant', ['darts', 'linear'])
@pytest.mark.parametrize('name', PRIMITIVES)
@pytest.mark.parametrize('channels', [1, 3])
def test_ops_keep_shape(name, variant, channels):
    op = build_op(name, channels, variant)
    x = torch.randn(2, channels, 5, 7)
    assert op(x).shape == x.shape


@pytest.mark.parametrize('name', LINEAR_PRIMITIVES)
@pytest.mark.parametrize('hw', [(5, 7), (12, 12)])
def test_linear_op_equals_its_dense_kernel(name, hw):
    op = build_op(name, 3, 'linear')
    _randomise(op)
    assert op.is_linear
    kernel = op.dense_kernel()
    assert kernel.shape == (3, 3, op.kernel_size, op.kernel_size)
    # 5x7 is smaller than the 9x9 dilated kernel: every pixel is a border pixel.
    x = torch.randn(2, 3, *hw)
    expected = op(x)
    got = F.conv2d(x, kernel, padding=kernel.shape[-1] // 2)
    assert (got - expected).abs().max() < 1e-5
    # Padding the kernel to a larger size changes nothing.
    wide = pad_kernel(kernel, 11)
    assert (F.conv2d(x, wide, padding=5) - expected).abs().max() < 1e-5


def test_dense_kernels_are_exact_structures():
    eye = torch.eye(2)
    assert torch.equal(build_op('skip_connect', 2, 'linear').dense_kernel(),
                       eye[:, :, None, None])
    assert torch.equal(build_op('none', 2, 'linear').dense_kernel(),
                       torch.zeros(2, 2, 1, 1))
    box = build_op('avg_pool_3x3', 2, 'linear').dense_kernel()
    assert torch.allclose(box[0, 0], torch.full((3, 3), 1 / 9))
    assert torch.equal(box[0, 1], torch.zeros(3, 3))
    dil = build_op('dil_conv_3x3', 2, 'linear')
    _randomise(dil)
    kernel = dil.dense_kernel()
    dw = dil.units[0].depthwise.weight[:, 0]
    pw = dil.units[0].pointwise.weight[:, :, 0, 0]
    # Dilation 2 puts the taps on every other row and column of a 5x5 kernel.
    assert torch.allclose(kernel[1, 0, ::2, ::2], pw[1, 0] * dw[0])
    assert torch.equal(kernel[:, :, 1::2, :], torch.zeros(2, 2, 2, 5))


def test_receptive_fields():
    assert [kernel_size_of(p) for p in PRIMITIVES] == [1, 3, 3, 1, 3, 5, 5, 9]
    for p in PRIMITIVES:
        assert build_op(p, 3, 'linear').kernel_size == kernel_size_of(p)


def test_darts_variant_structure():
    sep = build_op('sep_conv_3x3', 3, 'darts')
    assert isinstance(sep, ConvOp) and len(sep.units) == 2
    for unit in sep.units:
        assert isinstance(unit.relu, nn.ReLU)
        assert isinstance(unit.bn, nn.BatchNorm2d) and not unit.bn.affine
        assert unit.depthwise.groups == 3
    dil = build_op('dil_conv_5x5', 3, 'darts')
    assert len(dil.units) == 1 and dil.units[0].depthwise.dilation == (2, 2)
    assert dil.units[0].depthwise.padding == (4, 4)
    for name in ('max_pool_3x3', 'avg_pool_3x3'):
        pool = build_op(name, 3, 'darts')
        assert isinstance(pool.bn, nn.BatchNorm2d) and not pool.bn.affine
    for name in PRIMITIVES:
        op = build_op(name, 3, 'darts')
        assert op.is_linear == (name in ('none', 'skip_connect'))
    lin_sep = build_op('sep_conv_5x5', 3, 'linear')
    assert len(lin_sep.units) == 1 and lin_sep.units[0].relu is None
    assert lin_sep.units[0].bn is None


def test_avg_pool_border_counting():
    x = torch.ones(1, 1, 4, 4)
    darts = build_op('avg_pool_3x3', 1, 'darts').pool
    linear = build_op('avg_pool_3x3', 1, 'linear').pool
    # DARTS averages the 4 valid corner pixels; the linear box kernel the 9.
    assert darts(x)[0, 0, 0, 0].item() == pytest.approx(1.)
    assert linear(x)[0, 0, 0, 0].item() == pytest.approx(4 / 9)


def test_max_pool_is_not_collapsible():
    for variant in ('darts', 'linear'):
        op = build_op('max_pool_3x3', 3, variant)
        assert isinstance(op, Pool) and not op.is_linear
        with pytest.raises(RuntimeError, match='not linear'):
            op.dense_kernel()
    with pytest.raises(RuntimeError, match='not linear'):
        build_op('sep_conv_3x3', 3, 'darts').dense_kernel()


def test_none_and_skip():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(build_op('none', 3, 'darts')(x), torch.zeros_like(x))
    assert build_op('skip_connect', 3, 'darts')(x) is x


def test_build_op_errors():
    with pytest.raises(KeyError, match='unknown NAS-LoRA primitive'):
        build_op('conv_7x7', 3)
    with pytest.raises(ValueError, match='op_variant'):
        build_op('skip_connect', 3, 'relu')
    with pytest.raises(ValueError, match='channels'):
        build_op('skip_connect', 0)
    with pytest.raises(ValueError, match='cannot centre'):
        pad_kernel(torch.zeros(1, 1, 5, 5), 3)

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_naslora.models.adapters.ops import (LINEAR_PRIMITIVES, OP_VARIANTS, PRIMITIVES,
                                               ConvOp, MaskedBatchNorm2d, Pool, build_op,
                                               pad_kernel)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(op: nn.Module) -> None:
    with torch.no_grad():
        for p in op.parameters():
            p.normal_(std=0.5)


@pytest.mark.parametrize('variant', OP_VARIANTS)
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
    assert [build_op(p, 3, 'linear').kernel_size for p in PRIMITIVES] == [1, 3, 3, 1, 3, 5, 5, 9]


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


def test_linear_bn_variant_structure():
    for name in LINEAR_PRIMITIVES:
        op = build_op(name, 3, 'linear_bn')
        assert not op.is_linear or name in ('none', 'skip_connect')
        assert op.affine_map() is not None
    sep = build_op('sep_conv_5x5', 3, 'linear_bn')
    assert len(sep.units) == 1 and sep.units[0].relu is None
    assert isinstance(sep.units[0].bn, MaskedBatchNorm2d) and not sep.units[0].bn.affine
    pool = build_op('avg_pool_3x3', 3, 'linear_bn')
    assert pool.pool.count_include_pad and not pool.bn.affine


@pytest.mark.parametrize('name', LINEAR_PRIMITIVES)
@pytest.mark.parametrize('variant', ['linear', 'linear_bn'])
def test_eval_op_equals_its_affine_map(name, variant):
    op = build_op(name, 3, variant)
    _randomise(op)
    op.train()
    with torch.no_grad():
        for _ in range(3):
            op(torch.randn(4, 3, 6, 6) * 3 + 2)
    op.eval()
    kernel, bias = op.affine_map(torch.float64)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    got = F.conv2d(x, kernel, bias, padding=kernel.shape[-1] // 2)
    assert (got - op.double()(x)).abs().max() < 1e-5


def test_max_pool_is_not_collapsible():
    for variant in OP_VARIANTS:
        op = build_op('max_pool_3x3', 3, variant)
        assert isinstance(op, Pool) and not op.is_linear and op.affine_map() is None
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


def test_masked_batchnorm_matches_batchnorm_on_the_real_positions():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 6) * 2 + 1
    mask = torch.rand(3, 1, 5, 6) > 0.4
    masked = MaskedBatchNorm2d(2, affine=False, momentum=0.3)
    ref = nn.BatchNorm2d(2, affine=False, momentum=0.3)
    real = x.permute(0, 2, 3, 1)[mask[:, 0]]  # (P, C): the real positions only
    for _ in range(2):
        y = masked(x, mask)
        y_ref = ref(real[:, :, None, None])[:, :, 0, 0]
    assert torch.allclose(y.permute(0, 2, 3, 1)[mask[:, 0]], y_ref, atol=1e-5)
    assert torch.equal(y * ~mask, torch.zeros_like(y))
    assert torch.allclose(masked.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, ref.running_var, atol=1e-6)
    assert masked.num_batches_tracked == ref.num_batches_tracked == 2
    masked.eval(), ref.eval()
    assert torch.allclose(masked(x, mask).permute(0, 2, 3, 1)[mask[:, 0]],
                          ref(real[:, :, None, None])[:, :, 0, 0], atol=1e-5)
    # No mask: exactly nn.BatchNorm2d.
    assert torch.allclose(masked(x), ref(x), atol=1e-5)


@pytest.mark.parametrize('variant', OP_VARIANTS)
@pytest.mark.parametrize('name', PRIMITIVES)
def test_masked_op_equals_op_on_the_unpadded_map(name, variant):
    """A 4x5 map padded to 7x7 with garbage: masked, it gives the op's output on 4x5."""
    torch.manual_seed(0)
    op = build_op(name, 3, variant)
    _randomise(op)
    x = torch.randn(2, 3, 4, 5)
    padded = torch.full((2, 3, 7, 7), 7.)
    padded[..., :4, :5] = x
    mask = torch.zeros(2, 1, 7, 7, dtype=torch.bool)
    mask[..., :4, :5] = True
    # Training mode: the statistics must come from the real positions alone.
    expected, got = op.train()(x), op(padded, mask)
    assert torch.allclose(got[..., :4, :5], expected, atol=1e-5)
    assert torch.equal(got * ~mask, torch.zeros_like(got))


@pytest.mark.parametrize('variant', OP_VARIANTS)
@pytest.mark.parametrize('name,size', [('sep_conv_7x7', 7), ('conv_1x1', 1)])
def test_extra_ops_for_the_ablations(name, size, variant):
    op = build_op(name, 3, variant)
    _randomise(op)
    assert op.kernel_size == size and op(torch.randn(2, 3, 6, 6)).shape == (2, 3, 6, 6)
    assert name not in PRIMITIVES  # not in the default search space
    if variant == 'linear':
        x = torch.randn(2, 3, 5, 7)
        kernel = op.dense_kernel()
        assert (F.conv2d(x, kernel, padding=size // 2) - op(x)).abs().max() < 1e-5
    if variant == 'darts':
        assert op.affine_map() is None

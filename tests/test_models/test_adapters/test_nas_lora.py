import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from mmseg_naslora.models.adapters.arch import ALPHA_MARKER
from mmseg_naslora.models.adapters.conv_bottleneck_lora import ConvBottleneckLoRA
from mmseg_naslora.models.adapters.lora import LoRA
from mmseg_naslora.models.adapters.nas_lora import NASLoRA, NASPCLoRA
from mmseg_naslora.models.adapters.ops import LINEAR_PRIMITIVES, PRIMITIVES

TINY_ARCH = dict(embed_dims=64, depth=4, num_heads=2, global_attn_indexes=(1, 3))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_sam(adapter):
    return MODELS.build(dict(type='SAMViT', arch=TINY_ARCH, img_size=128,
                             window_size=4, out_channels=32, adapter=adapter))


def adapter(rank=3, **kwargs):
    return NASLoRA(nn.Linear(16, 48), rank=rank, **kwargs)


def randomise(module, b_scale=0.1):
    """Random α, op weights and B (B != 0), at modest scales."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(ALPHA_MARKER):
                p.normal_()
            elif 'lora_B' in name:
                p.normal_(std=b_scale)
            elif '.ops.' in f'.{name}':
                p.normal_(std=0.5)


def warm_up_statistics(module, *inputs, steps=3):
    """A few training forwards, so every BN has non-trivial running statistics."""
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            for x in inputs:
                module(x)
    return module.eval()


CONFIGS = [dict(op_variant='darts'), dict(op_variant='linear'),
           dict(op_variant='linear_bn'),
           dict(op_variant='darts', pc_ratio=2 / 3),
           dict(op_variant='linear', pc_ratio=2 / 3, residual=True),
           dict(op_variant='linear', pc_ratio=2 / 3, pc_channel_choice='random')]


@pytest.mark.parametrize('cfg', CONFIGS)
def test_init_output_equals_base_layer(cfg):
    torch.manual_seed(0)
    layer = adapter(**cfg).train()
    x = torch.randn(2, 5, 5, 16)
    assert torch.equal(layer(x), layer.base_layer(x))
    assert layer.nas_alpha.shape == (8, )
    assert layer.nas_alpha.abs().max() < 1e-2  # 1e-3 * randn


@pytest.mark.parametrize('cfg', CONFIGS[:4])
def test_alpha_gradient_zero_until_b_moves(cfg):
    torch.manual_seed(0)
    layer = adapter(**cfg).train()
    x = torch.randn(2, 6, 6, 16)
    layer(x).square().sum().backward()
    assert layer.nas_alpha.grad is not None
    assert torch.count_nonzero(layer.nas_alpha.grad) == 0
    layer.zero_grad()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    layer(x).square().sum().backward()
    grad = layer.nas_alpha.grad
    # 'none' has a constant zero output but still gets a gradient via softmax.
    assert torch.count_nonzero(grad) == len(PRIMITIVES)
    assert torch.isfinite(grad).all()


def test_mixed_op_is_the_softmax_weighted_sum():
    torch.manual_seed(0)
    layer = adapter(rank=3, op_variant='darts').train()
    randomise(layer)
    x = torch.randn(4, 3, 6, 6)
    weights = F.softmax(layer.nas_alpha, dim=-1)
    expected = sum(w * op(x) for w, op in zip(weights, layer.ops))
    assert torch.allclose(layer.mixed_op(x), expected, atol=1e-6)
    assert torch.allclose(layer.arch_weights(), weights.detach())
    assert not layer.arch_weights().requires_grad


@pytest.mark.parametrize('rank', [3, 6])
def test_fused_and_loop_paths_agree(rank):
    torch.manual_seed(0)
    kwargs = dict(rank=rank, op_variant='linear', primitives=PRIMITIVES)
    fused, loop = adapter(fused=True, **kwargs), adapter(fused=False, **kwargs)
    randomise(fused)
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 7, 16)
    out_f, out_l = fused(x), loop(x)
    assert (out_f - out_l).abs().max() < 1e-5
    out_f.square().sum().backward()
    out_l.square().sum().backward()
    for (name, pf), (_, pl) in zip(fused.named_parameters(), loop.named_parameters()):
        if pf.requires_grad:
            scale = pl.grad.abs().max()
            assert (pf.grad - pl.grad).abs().max() <= 1e-5 * scale, name


@pytest.mark.parametrize('variant', ['linear', 'linear_bn'])
@pytest.mark.parametrize('rank,pc_ratio,residual', [
    (3, 1., False), (3, 1., True), (3, 2 / 3, False), (3, 2 / 3, True),
    (6, 2 / 3, True), (5, 0.5, False), (1, 1., True)])
def test_linear_cell_is_one_convolution_in_eval_mode(variant, rank, pc_ratio, residual):
    torch.manual_seed(rank)
    layer = adapter(rank=rank, op_variant=variant, primitives=LINEAR_PRIMITIVES,
                    pc_ratio=pc_ratio, residual=residual)
    randomise(layer)
    warm_up_statistics(layer, torch.randn(3, 6, 7, 16) * 2 + 1)
    linear = layer.bottleneck_map()
    assert linear.kernel.shape == (rank, rank, 9, 9)
    assert (linear.bias is not None) == (variant == 'linear_bn')
    conv = ConvBottleneckLoRA.from_adapter(layer)
    assert conv.kernel_size == 9 and conv.mask_padding
    z = torch.randn(3, 5, 7, rank)
    assert (layer.bottleneck(z) - conv.bottleneck(z)).abs().max() < 1e-5
    x = torch.randn(3, 5, 7, 16)
    assert (layer(x) - conv(x)).abs().max() < 1e-5
    assert not torch.equal(layer(x), layer.base_layer(x))


def test_bn_cell_folds_running_statistics_into_kernel_and_bias():
    # One avg-pool op: eval output is (box * z - mean) / sqrt(var + eps).
    layer = adapter(rank=2, op_variant='linear_bn', primitives=['avg_pool_3x3'])
    bn = layer.ops[0].bn
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.]))
        bn.running_var.copy_(torch.tensor([4., 0.25]))
    linear = layer.eval().bottleneck_map()
    sigma = torch.sqrt(torch.tensor([4., 0.25], dtype=torch.float64) + bn.eps)
    assert torch.allclose(linear.kernel[0, 0], torch.full((3, 3), 1 / 9 / sigma[0].item(),
                                                          dtype=torch.float64))
    assert torch.equal(linear.kernel[0, 1], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(linear.bias, -torch.tensor([0.5, -1.], dtype=torch.float64) / sigma)


def test_linear_bn_alpha_is_identifiable_and_linear_alpha_is_not():
    """Moving softmax weight between convs and rescaling them back is invisible
    without normalisation and visible with it (the issue's counter-example)."""
    convs = ['sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']
    x = torch.randn(4, 6, 6, 16)
    changes = {}
    for variant in ('linear', 'linear_bn'):
        torch.manual_seed(0)
        layer = adapter(rank=3, op_variant=variant, primitives=convs).train()
        randomise(layer)
        with torch.no_grad():
            layer.nas_alpha.zero_()
        before = layer(x)
        old = layer.arch_weights()
        with torch.no_grad():
            layer.nas_alpha.copy_(torch.tensor([3., 0., 0., 0.]))
            new = layer.arch_weights()
            for op, w_old, w_new in zip(layer.ops, old, new):
                op.units[0].pointwise.weight.mul_(w_old / w_new)
        changes[variant] = ((layer(x) - before).norm() / before.norm()).item()
    assert changes['linear'] < 1e-5
    assert changes['linear_bn'] > 1e-3


def test_nonlinear_cells_have_no_map():
    for cfg in (dict(op_variant='linear_bn'), dict(op_variant='linear'),
                dict(op_variant='darts', primitives=LINEAR_PRIMITIVES)):
        layer = adapter(**cfg)
        assert layer.bottleneck_map() is None and not layer.mergeable
        assert layer.nonlinear_primitives()
        with pytest.raises(ValueError, match='no linear bottleneck'):
            ConvBottleneckLoRA.from_adapter(layer)
    assert adapter(op_variant='linear_bn').nonlinear_primitives() == ['max_pool_3x3']
    assert adapter(op_variant='linear', primitives=['skip_connect', 'sep_conv_3x3']
                   ).bottleneck_map().kernel_size == 3


def test_token_wise_cell_merges_into_base_layer():
    torch.manual_seed(0)
    layer = adapter(rank=3, primitives=['none', 'skip_connect'], pc_ratio=2 / 3,
                    residual=True, mask_padding=False).eval()
    randomise(layer, b_scale=0.05)
    assert layer.bottleneck_map().token_wise and layer.mergeable
    x = torch.randn(2, 4, 4, 16)
    expected = layer(x)
    folded = layer.base_layer(x) + x @ layer.delta_weight().t()
    assert (folded - expected).abs().max() < 1e-5
    layer.merge()
    assert (layer(x) - expected).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match='mixes neighbouring tokens'):
        adapter(op_variant='linear', primitives=LINEAR_PRIMITIVES).delta_weight()
    # Masking the padding cannot be expressed by a merged weight.
    masked = adapter(rank=3, primitives=['skip_connect'])
    with pytest.raises(RuntimeError, match='mask_padding'):
        masked.merge()


@pytest.mark.parametrize('rank,pc_ratio,mixed', [
    (3, 2 / 3, 2), (3, 1 / 3, 1), (3, 1., 3), (6, 2 / 3, 4), (5, 0.5, 3),
    (4, 0.3, 2)])
def test_pc_sends_ceil_pr_channels_through_the_ops(rank, pc_ratio, mixed):
    assert mixed == math.ceil(pc_ratio * rank - 1e-9)
    layer = adapter(rank=rank, pc_ratio=pc_ratio)
    assert layer.num_mixed == mixed
    seen = []
    for op in layer.ops:
        op.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    layer.bottleneck(torch.randn(2, 4, 4, rank))
    assert seen and set(seen) == {mixed}
    conv = layer.ops[PRIMITIVES.index('sep_conv_3x3')].units[0]
    assert conv.depthwise.in_channels == mixed == conv.pointwise.out_channels


@pytest.mark.parametrize('rank', [3, 6])
def test_pc_bypass_channels_pass_unchanged(rank):
    # A skip-only cell leaves the mixed channels as they are: no shuffle.
    layer = NASPCLoRA(nn.Linear(16, 48), rank=rank, primitives=['skip_connect'])
    assert layer.pc_ratio == pytest.approx(2 / 3)
    z = torch.randn(2, 3, 3, rank)
    assert torch.equal(layer.bottleneck(z), z)


def _zeroed_slots(layer, rank):
    # With only 'none', the mixed channels come out zero; the rest keep z.
    out = layer.bottleneck(torch.randn(2, 3, 3, rank) + 5)
    return tuple((out.abs().amax(dim=(0, 1, 2)) == 0).nonzero().flatten().tolist())


def test_random_channel_choice_changes_in_training_only():
    torch.manual_seed(0)
    rank = 6
    layer = adapter(rank=rank, primitives=['none'], pc_ratio=0.5, op_variant='linear',
                    pc_channel_choice='random').train()
    subsets = {_zeroed_slots(layer, rank) for _ in range(12)}
    assert len(subsets) > 1
    assert all(len(s) == 3 for s in subsets)
    layer.eval()
    fixed = {_zeroed_slots(layer, rank) for _ in range(5)}
    # Evaluation sends the first 3 channels.
    assert fixed == {(0, 1, 2)}
    layer.pc_channel_choice = 'fixed'
    layer.train()
    assert {_zeroed_slots(layer, rank) for _ in range(5)} == {(0, 1, 2)}


@pytest.mark.parametrize('variant', ['darts', 'linear_bn'])
def test_random_channels_are_refused_with_batchnorm_ops(variant):
    with pytest.raises(ValueError, match='running statistics'):
        adapter(pc_ratio=2 / 3, pc_channel_choice='random', op_variant=variant)


def test_share_alpha_ties_one_parameter():
    cfg = dict(type='NASLoRA', rank=3, op_variant='linear')
    shared = tiny_sam(dict(cfg, share_alpha=True))
    names = [n for n, _ in shared.named_parameters() if n.endswith(ALPHA_MARKER)]
    assert names == ['encoder.blocks.0.attn.qkv.nas_alpha']
    alphas = {id(b.attn.qkv.nas_alpha) for b in shared.encoder.blocks}
    assert len(alphas) == 1
    separate = tiny_sam(cfg)
    names = [n for n, _ in separate.named_parameters() if n.endswith(ALPHA_MARKER)]
    assert len(names) == 4


def test_layer_primitives_restrict_each_layer():
    keep = [['skip_connect'], ['none', 'sep_conv_3x3'], ['dil_conv_5x5'],
            ['max_pool_3x3', 'avg_pool_3x3']]
    model = tiny_sam(dict(type='NASLoRA', rank=3, layer_primitives=keep))
    for block, names in zip(model.encoder.blocks, keep):
        assert block.attn.qkv.primitives == names
        assert len(block.attn.qkv.ops) == len(names)
        assert block.attn.qkv.nas_alpha.shape == (len(names), )
    with pytest.raises(ValueError, match='one list per adapted layer'):
        tiny_sam(dict(type='NASLoRA', rank=3, layer_primitives=keep[:2]))


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(rank=3, pc_ratio=0.2), ValueError, r'pc_ratio \* rank'),
    (dict(rank=3, pc_ratio=0.), ValueError, r'in \(0, 1\]'),
    (dict(rank=3, pc_ratio=1.5), ValueError, r'in \(0, 1\]'),
    (dict(rank=0), ValueError, 'rank'),
    (dict(primitives=['sep_conv_3x3', 'conv_7x7']), KeyError, 'conv_7x7'),
    (dict(primitives=[]), ValueError, 'empty'),
    (dict(primitives='skip_connect'), TypeError, 'list of op names'),
    (dict(primitives=['none', 'none']), ValueError, 'twice'),
    (dict(op_variant='relu'), ValueError, 'op_variant'),
    (dict(pc_channel_choice='first'), ValueError, 'pc_channel_choice'),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        NASLoRA(nn.Linear(16, 48), **kwargs)


@pytest.mark.parametrize('cfg', [
    dict(type='NASLoRA', rank=3),
    dict(type='NASLoRA', rank=3, op_variant='linear', residual=True),
    dict(type='NASLoRA', rank=3, op_variant='linear_bn', residual=True),
    dict(type='NASPCLoRA', rank=3, pc_channel_choice='random', op_variant='linear')])
def test_injection_into_windowed_and_global_blocks(cfg):
    torch.manual_seed(0)
    model = tiny_sam(cfg).train()
    shapes = {}
    for i, block in enumerate(model.encoder.blocks):
        assert isinstance(block.attn.qkv, NASLoRA)
        block.attn.qkv.register_forward_pre_hook(
            lambda m, inp, i=i: shapes.setdefault(i, inp[0].shape) and None)
    x = torch.randn(1, 3, 80, 80)  # 5x5 tokens; windows of 4 need padding to 8x8
    base = model(x)[0].detach()
    # Windowed blocks see 4 padded windows of 4x4, global blocks the 5x5 grid.
    assert shapes[0] == shapes[2] == (4, 4, 4, 64)
    assert shapes[1] == shapes[3] == (1, 5, 5, 64)
    randomise(model)
    out = model(x)[0]
    assert out.shape == (1, 32, 5, 5)
    assert not torch.allclose(out, base)
    out.square().mean().backward()
    grads = [b.attn.qkv.nas_alpha.grad for b in model.encoder.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    frozen = model.encoder.blocks[0].attn.qkv.base_layer.weight
    assert not frozen.requires_grad and frozen.grad is None


def test_prune_topk_keeps_the_largest_real_ops_at_their_trained_weights():
    torch.manual_seed(0)
    layer = adapter(rank=3, op_variant='darts').eval()
    randomise(layer)
    # 'none' has the largest α: it is still never kept.
    with torch.no_grad():
        layer.nas_alpha.copy_(torch.tensor([4., -1., 2., 0.1, 3., -2., 1.5, 0.]))
    pruned = layer.prune_topk(3)
    assert pruned.primitives == ['avg_pool_3x3', 'sep_conv_3x3', 'dil_conv_3x3']
    kept = [2, 4, 6]
    full = F.softmax(layer.nas_alpha.detach(), dim=-1)
    assert torch.allclose(pruned.arch_weights(), full[kept])
    assert pruned.arch_weights().sum() < 0.5  # not renormalised
    for new, i in zip(pruned.ops, kept):
        old = layer.ops[i].state_dict()
        assert all(torch.equal(v, old[k]) for k, v in new.state_dict().items())
    z = torch.randn(2, 3, 6, 6)
    expected = sum(full[i] * layer.ops[i](z) for i in kept)
    assert torch.allclose(pruned.mixed_op(z), expected, atol=1e-6)
    # Pruning again keeps the weights of the first pruning.
    assert torch.allclose(pruned.prune_topk(1).arch_weights(), full[[4]])
    assert layer.primitives == list(PRIMITIVES)  # the original is untouched
    with pytest.raises(ValueError, match='other than none'):
        layer.prune_topk(8)


def test_conv_bottleneck_lora():
    torch.manual_seed(0)
    conv = ConvBottleneckLoRA(nn.Linear(16, 48), rank=3, kernel_size=5)
    lora = LoRA(conv.base_layer, rank=3)
    lora.load_state_dict({k: v for k, v in conv.state_dict().items()
                          if not k.startswith('conv.')})
    with torch.no_grad():
        lora.lora_B.weight.normal_()
        conv.lora_B.weight.copy_(lora.lora_B.weight)
    x = torch.randn(2, 4, 4, 16)
    # The Dirac initialisation makes a fresh one plain LoRA.
    assert torch.allclose(conv(x), lora(x), atol=1e-6)
    assert not conv.bottleneck_map().token_wise and not conv.mergeable
    with pytest.raises(ValueError, match='odd'):
        ConvBottleneckLoRA(nn.Linear(16, 48), kernel_size=4)
    point = ConvBottleneckLoRA(nn.Linear(16, 48), rank=3, kernel_size=1, bias=True,
                               mask_padding=False)
    with torch.no_grad():
        point.conv.weight.normal_()
        point.conv.bias.normal_()
        point.lora_B.weight.normal_(std=0.1)
    assert point.mergeable
    weight, bias = point.delta()
    folded = point.base_layer(x) + x @ weight.t() + bias
    assert (folded - point(x)).abs().max() < 1e-5


def test_random_channels_survive_activation_checkpointing():
    # The recompute must draw the same channels, or the gradients are wrong.
    cfg = dict(type='NASPCLoRA', rank=3, pc_channel_choice='random',
               op_variant='linear')
    plain = tiny_sam(cfg).train()
    randomise(plain)
    ckpt = MODELS.build(dict(type='SAMViT', arch=TINY_ARCH, img_size=128,
                             window_size=4, out_channels=32, adapter=cfg,
                             with_cp=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for model in (plain, ckpt):
        torch.manual_seed(7)
        model(x)[0].square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name

import math

import pytest
import torch
import torch.nn as nn

from mmseg_naslora.models.adapters import (LoRA, inject_adapters, iter_adapters, merge_adapters,
                                           unmerge_adapters)
from mmseg_naslora.models.adapters.inject import unwrapped_state_keys


class Blocks(nn.Module):

    def __init__(self, depth=3, dim=8):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim)))
            for _ in range(depth))


def randomise(adapter: LoRA) -> None:
    nn.init.normal_(adapter.lora_B.weight, std=0.5)


def test_starts_equal_to_base_layer():
    base = nn.Linear(8, 24)
    x = torch.randn(2, 4, 4, 8)
    expected = base(x)
    adapter = LoRA(base, rank=3, lora_alpha=32)
    assert torch.equal(adapter(x), expected)
    assert adapter.scaling == pytest.approx(32 / 3)


@pytest.mark.parametrize('shape', [(2, 4, 5, 8), (2, 9, 8)])
def test_merge_unmerge_round_trip(shape):
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    original = base.weight.detach().clone()
    adapter = LoRA(base, rank=3, lora_alpha=32)
    randomise(adapter)
    x = torch.randn(*shape)
    unmerged = adapter(x)
    assert (unmerged - base(x)).abs().max() > 1e-2  # the update is not trivial
    adapter.merge()
    assert adapter.merged
    assert (adapter(x) - unmerged).abs().max() < 1e-5
    adapter.unmerge()
    assert (adapter(x) - unmerged).abs().max() < 1e-5
    assert (base.weight - original).abs().max() < 1e-6


def test_injection_counts_and_trainable_parameters():
    model = Blocks(depth=3, dim=8)
    model.requires_grad_(False)
    names = inject_adapters(model, dict(type='LoRA', rank=2), target=r'\.qkv$')
    assert names == [f'blocks.{i}.qkv' for i in range(3)]
    assert len(list(iter_adapters(model))) == 3
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * (2 * 8 + 24 * 2)
    assert all(isinstance(b['proj'], nn.Linear) for b in model.blocks)


def test_injection_into_selected_blocks():
    model = Blocks(depth=4)
    names = inject_adapters(model, dict(type='LoRA', rank=1), target=r'\.qkv$', blocks=[0, 3])
    assert names == ['blocks.0.qkv', 'blocks.3.qkv']
    with pytest.raises(ValueError, match=r'adapter_blocks \[7\] do not exist'):
        inject_adapters(Blocks(depth=4), dict(type='LoRA'), target=r'\.qkv$', blocks=[7])


def test_injection_errors():
    with pytest.raises(KeyError, match='no `type`'):
        inject_adapters(Blocks(), dict(rank=3))
    with pytest.raises(ValueError, match='nothing to adapt'):
        inject_adapters(Blocks(), dict(type='LoRA'), target='kqv')
    with pytest.raises(ValueError, match='rank must be an integer >= 1'):
        LoRA(nn.Linear(4, 4), rank=0)


def test_state_keys_keep_base_layer_and_map_back():
    model = Blocks(depth=2)
    inject_adapters(model, dict(type='LoRA', rank=2), target=r'\.qkv$')
    keys = unwrapped_state_keys(model)
    assert keys['blocks.0.qkv.weight'] == 'blocks.0.qkv.base_layer.weight'
    assert keys['blocks.1.proj.bias'] == 'blocks.1.proj.bias'
    assert not any('lora' in k for k in keys)


def test_merge_all_adapters_in_model():
    torch.manual_seed(0)
    model = Blocks(depth=2)
    inject_adapters(model, dict(type='LoRA', rank=2), target=r'\.qkv$')
    for _, a in iter_adapters(model):
        randomise(a)
    x = torch.randn(3, 8)
    before = [b['qkv'](x) for b in model.blocks]
    assert merge_adapters(model) == 2
    for b, ref in zip(model.blocks, before):
        assert (b['qkv'](x) - ref).abs().max() < 1e-5
    unmerge_adapters(model)
    assert not any(a.merged for _, a in iter_adapters(model))


class BlurLoRA(LoRA):
    """A spatial bottleneck: the token layout matters."""

    def bottleneck(self, z):
        nchw = z.permute(0, 3, 1, 2)
        return torch.nn.functional.avg_pool2d(nchw, 3, 1, 1).permute(0, 2, 3, 1)


def test_pure_lora_accepts_any_token_layout():
    adapter = LoRA(nn.Linear(8, 24), rank=2)
    assert adapter(torch.randn(3, 7, 8)).shape == (3, 7, 24)
    assert adapter.mergeable and not BlurLoRA(nn.Linear(8, 24)).mergeable


def test_spatial_bottleneck_sees_the_token_grid():
    torch.manual_seed(0)
    adapter = BlurLoRA(nn.Linear(8, 24), rank=2)
    randomise(adapter)
    grid = torch.randn(1, 2, 5, 8)
    # Flat tokens viewed through grid_size give exactly the grid result.
    adapter.grid_size = (2, 5)
    assert torch.allclose(adapter(grid.reshape(1, 10, 8)), adapter(grid).reshape(1, 10, 24))
    with pytest.raises(RuntimeError, match='cannot be folded'):
        adapter.merge()


def test_flat_tokens_need_a_grid():
    adapter = BlurLoRA(nn.Linear(8, 24), rank=2)
    with pytest.raises(ValueError, match='do not form a 3x3 grid'):
        adapter(torch.randn(1, 10, 8))
    adapter.grid_size = (2, 5)
    assert adapter(torch.randn(1, 10, 8)).shape == (1, 10, 24)


@pytest.mark.parametrize('kwargs,match', [
    (dict(lora_alpha=0), 'lora_alpha must be a finite non-zero number'),
    (dict(lora_alpha=float('nan')), 'lora_alpha must be a finite non-zero number'),
    (dict(dropout=-0.1), r'dropout must be in \[0, 1\)'),
    (dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
])
def test_lora_arguments_that_cannot_train_are_refused(kwargs, match):
    """lora_alpha=0 scales the update and its gradients to zero: the adapter never trains."""
    with pytest.raises(ValueError, match=match):
        LoRA(nn.Linear(4, 12), **kwargs)
    with pytest.raises(ValueError, match=match):  # through the config route too
        inject_adapters(Blocks(), dict(type='LoRA', **kwargs), target=r'\.qkv$')


@pytest.mark.parametrize('adapter_type', ['LoRA', 'ConvLoRA', 'NASLoRA', 'NASPCLoRA',
                                          'ConvBottleneckLoRA'])
def test_deprecated_alpha_still_scales_with_a_warning(adapter_type):
    """``alpha`` was ``lora_alpha``'s name: old configs keep building, with a FutureWarning."""
    with pytest.warns(FutureWarning, match=f'{adapter_type}: `alpha` is deprecated, use '
                      '`lora_alpha`'):
        model = Blocks()
        inject_adapters(model, dict(type=adapter_type, rank=2, alpha=6), target=r'\.qkv$')
    assert {a.scaling for _, a in iter_adapters(model)} == {3.}


def test_deprecated_alpha_given_with_lora_alpha_is_refused():
    # A config setting `alpha` over a _base_ adapter with `lora_alpha` merges into both.
    with pytest.raises(ValueError, match='got both lora_alpha=32 and alpha=16'):
        LoRA(nn.Linear(4, 12), lora_alpha=32, alpha=16)
    with pytest.raises(ValueError, match='rename its `alpha` to `lora_alpha`'):
        inject_adapters(Blocks(), dict(type='NASLoRA', lora_alpha=32, alpha=16),
                        target=r'\.qkv$')


def test_adapter_files_recorded_with_alpha_match_lora_alpha_configs():
    """Adapter files and resume stamps written before the rename record ``alpha``."""
    from mmseg_naslora.checkpoint.adapter_file import describe_model, description_diff

    def described(**adapter):
        return describe_model(dict(backbone=dict(type='SAMViT', adapter=adapter)))

    old = described(type='NASLoRA', rank=3, alpha=32)
    assert description_diff(old, described(type='NASLoRA', rank=3, lora_alpha=32.)) == []
    assert description_diff(old, described(type='NASLoRA', rank=3)) == []  # the default
    assert description_diff(old, described(type='NASLoRA', rank=3, lora_alpha=16)) == ['adapter']


def test_empty_adapter_blocks_says_the_list_is_empty():
    with pytest.raises(ValueError, match=r'adapter_blocks=\[\] is an empty list') as info:
        inject_adapters(Blocks(), dict(type='LoRA'), target=r'\.qkv$', blocks=[])
    assert 'target' not in str(info.value)  # the old message blamed the regex


@pytest.mark.parametrize('in_features', [144, 1152])  # Hiera-L's narrowest and widest qkv
def test_init_a_randn_is_the_sam2lora_reference_draw(in_features):
    """The reference draws A as randn(in, r) / sqrt(r); peft draws Kaiming-uniform."""
    torch.manual_seed(0)
    rank = 64
    base = nn.Linear(in_features, 3 * in_features)
    randn = LoRA(base, rank=rank, lora_alpha=128, init_a='randn').lora_A.weight
    kaiming = LoRA(base, rank=rank, lora_alpha=128).lora_A.weight
    assert randn.std().item() == pytest.approx(1 / math.sqrt(rank), rel=0.05)
    assert randn.mean().abs().item() < 0.01
    bound = 1 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) of nn.Linear
    assert kaiming.abs().max().item() <= bound
    assert kaiming.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    ratio = randn.std().item() / kaiming.std().item()
    assert ratio == pytest.approx(math.sqrt(3 * in_features) / math.sqrt(rank), rel=0.08)
    with pytest.raises(ValueError, match="init_a must be 'kaiming' or 'randn'"):
        LoRA(base, init_a='gaussian')

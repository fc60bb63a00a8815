import inspect

import pytest
import torch

pytest.importorskip('sam2', reason='SAM2 is installed from requirements/sam2.txt')
from sam2_tiny import TINY_DIM, TINY_HIERA, build_official_sam2, save_official  # noqa: E402

from mmseg_naslora.models.adapters.inject import (iter_adapters,  # noqa: E402
                                                  unwrapped_state_keys)
from mmseg_naslora.models.backbones.sam2_hiera import SAM2_HIERA_ARCHS, SAM2Hiera  # noqa: E402

# (dim, dim_out) of each tiny block: stage widths 16, 32, 64, 128, and the
# first block of a stage widens (and pools queries).
TINY_BLOCK_DIMS = [(16, 16), (16, 32), (32, 64), (64, 64), (64, 128)]


def tiny_hiera(**kwargs) -> SAM2Hiera:
    return SAM2Hiera(arch=TINY_HIERA, out_channels=TINY_DIM, **kwargs)


@pytest.fixture(scope='module')
def official_sam2(tmp_path_factory):
    """``(sam2, path)``: a tiny random SAM2Base saved like the official .pt."""
    sam2 = build_official_sam2()
    return sam2, save_official(sam2, str(tmp_path_factory.mktemp('ckpt') / 'sam2_tiny.pt'))


@pytest.mark.parametrize('version', ['sam2', 'sam2.1'])
@pytest.mark.parametrize('size', ['t', 's', 'b+', 'l'])
def test_presets_equal_the_official_configs(version, size):
    """Each preset resolves to the arguments of sam2's own yaml (hydra-composed)."""
    from hydra import compose
    from omegaconf import OmegaConf
    from sam2.modeling.backbones.hieradet import Hiera
    prefix = 'sam2' if version == 'sam2' else 'sam2.1'
    cfg = OmegaConf.to_container(
        compose(config_name=f'configs/{version}/{prefix}_hiera_{size}.yaml').model,
        resolve=True)
    defaults = {k: v.default for k, v in inspect.signature(Hiera).parameters.items()}

    def resolved(args):
        return {k: tuple(args[k]) if isinstance(args.get(k), (list, tuple)) else
                args.get(k, defaults[k]) for k in defaults}

    official = {k: v for k, v in cfg['image_encoder']['trunk'].items() if k != '_target_'}
    assert resolved(official) == resolved(SAM2_HIERA_ARCHS[f'hiera-{size}'])
    neck = cfg['image_encoder']['neck']
    width = SAM2_HIERA_ARCHS[f'hiera-{size}']['embed_dim']
    assert neck['backbone_channel_list'] == [width * 2**i for i in (3, 2, 1, 0)]
    assert (neck['d_model'], neck['fpn_top_down_levels'], neck['fpn_interp_model'],
            cfg['image_encoder']['scalp']) == (256, [2, 3], 'nearest', 1)
    # What the backbone/head pair assumes about the image path.
    assert cfg['directly_add_no_mem_embed'] and cfg['use_high_res_features_in_sam']
    assert cfg['pred_obj_scores'] and cfg['pred_obj_scores_mlp']


@pytest.mark.parametrize('size', [(64, 64), (96, 64)])
def test_outputs_strides_4_8_16_at_out_channels(size):
    model = tiny_hiera(adapter=dict(type='LoRA', rank=2))
    out = model(torch.randn(2, 3, *size))
    h, w = size
    assert [tuple(o.shape) for o in out] == [(2, TINY_DIM, h // s, w // s) for s in (4, 8, 16)]


def test_bad_inputs_and_archs_are_refused_clearly():
    with pytest.raises(ValueError, match='multiple of 32'):
        tiny_hiera()(torch.randn(1, 3, 64, 48))
    with pytest.raises(KeyError, match="'hiera-b\\+'"):
        SAM2Hiera(arch='hiera-xl')
    with pytest.raises(KeyError, match="missing \\['window_spec'"):
        SAM2Hiera(arch={k: v for k, v in TINY_HIERA.items() if k != 'window_spec'})
    with pytest.raises(ValueError, match='query-pooling blocks'):
        SAM2Hiera(arch=dict(TINY_HIERA, global_att_blocks=(2, )))
    with pytest.raises(ValueError, match=r'adapter_blocks=\[\] is an empty list') as info:
        tiny_hiera(adapter=dict(type='LoRA'), adapter_blocks=[])
    assert 'target' not in str(info.value)


def test_official_checkpoint_round_trip_and_equal_output_at_init(official_sam2):
    sam2, path = official_sam2
    model = tiny_hiera(checkpoint=path, adapter=dict(type='LoRA', rank=3, lora_alpha=6, dropout=0.1))
    model.init_weights()
    got = model.image_encoder.state_dict()
    for key, value in sam2.image_encoder.state_dict().items():
        assert torch.equal(got[key.replace('attn.qkv.', 'attn.qkv.base_layer.')], value), key
    assert torch.equal(model.no_mem_embed, sam2.no_mem_embed)
    x = torch.randn(2, 3, 64, 64)
    model.train()  # B = 0, so even with LoRA dropout the frozen encoder is reproduced
    with torch.no_grad():
        ours = model(x)
        ref = sam2.image_encoder(x)['backbone_fpn']
    assert len(ours) == len(ref) == 3
    for level in range(2):
        assert torch.allclose(ours[level], ref[level], atol=1e-6)
    assert torch.allclose(ours[2], ref[2] + sam2.no_mem_embed.view(1, -1, 1, 1), atol=1e-6)


def test_checkpoint_of_another_arch_names_shapes_and_hint(official_sam2):
    _, path = official_sam2
    model = SAM2Hiera(arch=dict(TINY_HIERA, embed_dim=8), out_channels=TINY_DIM, checkpoint=path)
    with pytest.raises(ValueError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'trunk.patch_embed.proj.weight: expected (8, 3, 7, 7), found (16, 3, 7, 7)' in msg
    assert 'embed_dim 16 and 5 blocks' in msg and 'pass a matching arch dict' in msg
    # A preset-sized checkpoint is named, with the arch to set.
    fake = {'trunk.patch_embed.proj.weight': torch.zeros(96, 3, 7, 7),
            **{f'trunk.blocks.{i}.attn.qkv.weight': torch.zeros(1) for i in range(12)}}
    assert "set arch='hiera-t'" in SAM2Hiera._arch_hint(fake)


def test_missing_no_mem_embed_and_foreign_files_are_refused(official_sam2, tmp_path):
    sam2, _ = official_sam2
    state = {k: v for k, v in sam2.state_dict().items() if k != 'no_mem_embed'}
    path = str(tmp_path / 'no_mem.pt')
    torch.save({'model': state}, path)
    with pytest.raises(KeyError, match='add_no_mem_embed=False'):
        tiny_hiera(checkpoint=path).init_weights()
    tiny_hiera(checkpoint=path, add_no_mem_embed=False).init_weights()
    torch.save({'model': {'decoder.w': torch.zeros(1)}}, path)
    with pytest.raises(KeyError, match='no image_encoder'):
        tiny_hiera(checkpoint=path).init_weights()


def test_lora_counts_and_trainable_parameters_match_the_formula():
    rank = 4
    model = tiny_hiera(adapter=dict(type='LoRA', rank=rank, lora_alpha=2 * rank, dropout=0.1))
    assert model.adapted_layers == [f'trunk.blocks.{i}.attn.qkv' for i in range(5)]
    # qkv: Linear(dim, 3 * dim_out); LoRA adds A (rank x dim) and B (3 dim_out x rank).
    expected = sum(rank * (dim + 3 * dim_out) for dim, dim_out in TINY_BLOCK_DIMS)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected == rank * 1104
    assert all('.lora_A.' in n or '.lora_B.' in n for n in trainable)
    assert all(a.scaling == 2 for _, a in iter_adapters(model))
    some = tiny_hiera(adapter=dict(type='LoRA', rank=rank), adapter_blocks=[0, 4])
    assert some.adapted_layers == ['trunk.blocks.0.attn.qkv', 'trunk.blocks.4.attn.qkv']


def test_spatial_adapters_see_each_blocks_token_grid():
    """qkv gets (B*nWin, win, win, C) windows, the pre-pooling grid in pooling blocks."""
    model = tiny_hiera(adapter=dict(type='ConvLoRA', rank=2))
    seen = {}
    for name, adapter in iter_adapters(model):
        adapter.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, tuple(args[0].shape)))
    frozen = tiny_hiera()
    frozen.load_state_dict({k: model.state_dict()[v]
                            for k, v in unwrapped_state_keys(model).items()})
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(x)
        ref = frozen(x)
    # 64x64 input: 16x16 grid at stride 4. Windows (window_spec 4, 2, 2, 1)
    # lag one block behind the stage; block 3 is global.
    assert seen == {
        'image_encoder.trunk.blocks.0.attn.qkv': (2 * 16, 4, 4, 16),
        'image_encoder.trunk.blocks.1.attn.qkv': (2 * 16, 4, 4, 16),
        'image_encoder.trunk.blocks.2.attn.qkv': (2 * 16, 2, 2, 32),
        'image_encoder.trunk.blocks.3.attn.qkv': (2, 4, 4, 64),
        'image_encoder.trunk.blocks.4.attn.qkv': (2 * 4, 2, 2, 64),
    }
    # B = 0 at init: the conv bottleneck changes nothing yet.
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, ref))


def test_nas_lora_runs_on_the_hiera_grid():
    pytest.importorskip('mmseg_naslora.models.adapters.nas_lora')
    model = tiny_hiera(adapter=dict(type='NASLoRA', rank=3))
    out = model(torch.randn(1, 3, 64, 64))
    assert out[2].shape == (1, TINY_DIM, 4, 4)
    out[2].sum().backward()
    assert all(a.lora_A.weight.grad is not None for _, a in iter_adapters(model))


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = tiny_hiera(adapter=dict(type='LoRA', rank=2))
    with torch.no_grad():
        for _, a in iter_adapters(plain):
            a.lora_B.weight.normal_()
    ckpt = tiny_hiera(adapter=dict(type='LoRA', rank=2), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))

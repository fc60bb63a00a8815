import pytest
import torch
from conftest import TINY_ARCH, TINY_WINDOW

from mmseg_naslora.models.adapters import LoRA
from mmseg_naslora.models.backbones import SAMViT


def tiny_vit(**kwargs) -> SAMViT:
    cfg = dict(arch=TINY_ARCH, img_size=64, window_size=TINY_WINDOW, out_channels=32)
    cfg.update(kwargs)
    return SAMViT(**cfg)


@pytest.mark.parametrize('size', [(64, 64), (96, 48)])
def test_output_shape_at_two_sizes(size):
    model = tiny_vit(adapter=dict(type='LoRA', rank=2))
    out = model(torch.randn(2, 3, *size))
    assert len(out) == 1
    assert out[0].shape == (2, 32, size[0] // 16, size[1] // 16)


def test_rejects_size_not_multiple_of_16():
    with pytest.raises(ValueError, match='multiple of 16'):
        tiny_vit()(torch.randn(1, 3, 64, 56))
    with pytest.raises(ValueError, match='img_size=72'):
        tiny_vit(img_size=72)


def test_official_checkpoint_round_trip(official_sam):
    sam, path = official_sam
    model = tiny_vit(checkpoint=path, adapter=dict(type='LoRA', rank=3))
    model.init_weights()
    expected = {f'image_encoder.{k}': v for k, v in sam.image_encoder.state_dict().items()}
    got = model.encoder.state_dict()
    for key, value in expected.items():
        own = key[len('image_encoder.'):].replace('attn.qkv.', 'attn.qkv.base_layer.')
        assert torch.equal(got[own], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # B = 0 at init: the adapted encoder reproduces segment-anything's own.
        assert torch.allclose(model(x)[0], sam.image_encoder(x), atol=1e-6)


def test_checkpoint_at_other_input_size_interpolates_positions(official_sam):
    sam, path = official_sam
    model = tiny_vit(img_size=96, checkpoint=path)
    model.init_weights()
    assert model.encoder.pos_embed.shape == (1, 6, 6, 32)
    # The global block's relative table is resized to 2 * 6 - 1 rows.
    assert model.encoder.blocks[1].attn.rel_pos_h.shape[0] == 11
    assert not torch.equal(model.encoder.pos_embed[0, 0, 0], torch.zeros(32))
    assert model(torch.randn(1, 3, 96, 96))[0].shape == (1, 32, 6, 6)


def test_checkpoint_of_other_arch_names_shapes_and_hint(official_sam):
    _, path = official_sam
    model = SAMViT(arch=dict(embed_dims=64, depth=2, num_heads=2, global_attn_indexes=(1, )),
                   img_size=64, window_size=TINY_WINDOW, out_channels=32, checkpoint=path)
    with pytest.raises(ValueError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'expected (64, 3, 16, 16), found (32, 3, 16, 16)' in msg
    assert 'width 32 and depth 2' in msg and 'arch' in msg


def test_checkpoint_without_image_encoder(tmp_path):
    path = str(tmp_path / 'bad.pth')
    torch.save({'mask_decoder.x': torch.zeros(1)}, path)
    with pytest.raises(KeyError, match='no image_encoder'):
        tiny_vit(checkpoint=path).init_weights()


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        tiny_vit(checkpoint=str(tmp_path / 'nowhere.pth')).init_weights()


def test_only_adapters_train():
    model = tiny_vit(adapter=dict(type='LoRA', rank=3))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f'encoder.blocks.{i}.attn.qkv.lora_{ab}.weight'
                         for i in range(2) for ab in 'AB'}


def test_vit_b_preset_builds_with_lora_parameter_count():
    model = SAMViT(arch='b', img_size=256, adapter=dict(type='LoRA', rank=3, lora_alpha=32))
    assert len(model.adapted_layers) == 12
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 12 * (3 * 768 + 3 * 768 * 3)
    assert all(isinstance(b.attn.qkv, LoRA) for b in model.encoder.blocks)


def test_unknown_arch():
    with pytest.raises(KeyError, match="choose from \\['b', 'h', 'l'\\]"):
        SAMViT(arch='xl')


def test_empty_adapter_blocks_says_the_list_is_empty():
    with pytest.raises(ValueError, match=r'adapter_blocks=\[\] is an empty list') as info:
        tiny_vit(adapter=dict(type='LoRA'), adapter_blocks=[])
    assert 'target' not in str(info.value)


def test_activation_checkpointing_matches_plain():
    torch.manual_seed(0)
    plain = tiny_vit(adapter=dict(type='LoRA', rank=2))
    for _, p in plain.named_parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    ckpt = tiny_vit(adapter=dict(type='LoRA', rank=2), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    outs, grads = [], []
    for model in (plain, ckpt):
        out = model(x)[0]
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert torch.allclose(*outs, atol=1e-6)
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, atol=1e-6)

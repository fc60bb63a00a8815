"""NASEncoderDecoder.train_step: stages, step counts, gradient isolation, data split."""
import pytest
import torch
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmengine.config import ConfigDict
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper, OptimWrapperDict, build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_naslora.models.adapters.conv_lora import ConvLoRA
from mmseg_naslora.models.adapters.nas_lora import ALPHA_MARKER
from mmseg_naslora.models.segmentors.nas_encoder_decoder import NASEncoderDecoder

SIZE = 64
NAS_OPTIM = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4)),
    alpha=dict(type='OptimWrapper',
               optimizer=dict(type='Adam', lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-3)))


def build_model(adapter=None, randomise_b=True, **kwargs) -> NASEncoderDecoder:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='NASEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(SIZE, SIZE)),
        backbone=dict(type='SAMViT', arch=TINY_ARCH, img_size=SIZE, window_size=TINY_WINDOW,
                      out_channels=TINY_DECODER['channels'],
                      adapter=adapter or dict(type='NASLoRA', rank=3)),
        decode_head=dict(type='SAMMaskDecoderHead', num_classes=2, out_channels=1,
                         threshold=0.5, **TINY_DECODER,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)),
        test_cfg=ConfigDict(mode='whole'),
        **kwargs))
    if randomise_b:
        # B = 0 at init makes dL/dα exactly 0; a random B gives α real gradients.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if 'lora_B' in name:
                    p.normal_(std=0.1)
    return model


def make_batch(num=2, seed=0) -> dict:
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


def alpha_params(model):
    return [p for n, p in model.named_parameters() if n.endswith(ALPHA_MARKER)]


def weight_params(model):
    alpha = {id(p) for p in alpha_params(model)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in alpha]


class StepSpy:
    """Wraps each optimizer's ``step`` and records the gradients it sees."""

    def __init__(self, model, optim_wrapper):
        self.calls = []
        self.model = model
        wrappers = optim_wrapper.items() if isinstance(optim_wrapper, OptimWrapperDict) \
            else [('weights', optim_wrapper)]
        for name, wrapper in wrappers:
            wrapper.optimizer.step = self._wrap(name, wrapper.optimizer.step)

    def _wrap(self, name, step):
        def spy(*args, **kwargs):
            alpha = alpha_params(self.model)
            weights = weight_params(self.model)
            self.calls.append(dict(
                name=name,
                alpha_grads=[None if p.grad is None else p.grad.clone() for p in alpha],
                weight_grads=[None if p.grad is None else p.grad.clone() for p in weights],
                alpha_requires_grad=[p.requires_grad for p in alpha]))
            return step(*args, **kwargs)
        return spy

    def count(self, name):
        return sum(c['name'] == name for c in self.calls)


@pytest.fixture
def hub():
    """A fresh message hub, as the runner has, whose iteration we set."""
    return MessageHub.get_instance('test_nas_encoder_decoder_hub')


def run_steps(model, optim_wrapper, hub, iters):
    logs = []
    for it in iters:
        hub.update_info('iter', it)
        logs.append(model.train_step(make_batch(seed=it), optim_wrapper))
    return logs


@pytest.mark.parametrize('stage', ['warmup', 'frozen'])
def test_alpha_bitwise_unchanged_outside_search(hub, stage):
    model = build_model()
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    model.nas_stage = stage
    alpha0 = [p.detach().clone() for p in alpha_params(model)]
    weights0 = [p.detach().clone() for p in weight_params(model)]
    logs = run_steps(model, ow, hub, range(3))
    assert all(torch.equal(a, p) for a, p in zip(alpha0, alpha_params(model)))
    assert spy.count('weights') == 3 and spy.count('alpha') == 0
    # Adam never ran on α: no state, so weight decay never touched it.
    assert not ow['alpha'].optimizer.state
    assert any(not torch.equal(w, p) for w, p in zip(weights0, weight_params(model)))
    assert not any(k.startswith('alpha.') for k in logs[-1])
    # α's requires_grad is restored after each step.
    assert all(p.requires_grad for p in alpha_params(model))


@pytest.mark.parametrize('interval, iters, expected_alpha', [(1, range(4), 4),
                                                             (2, range(4), 2),
                                                             (3, range(5, 12), 2)])
def test_search_step_counts_follow_alpha_interval(hub, interval, iters, expected_alpha):
    model = build_model(alpha_interval=interval)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    model.nas_stage = 'search'
    alpha0 = [p.detach().clone() for p in alpha_params(model)]
    logs = run_steps(model, ow, hub, iters)
    assert spy.count('weights') == len(iters)
    assert spy.count('alpha') == expected_alpha
    # The α step comes first in its iteration.
    expected = []
    for it in iters:
        expected += (['alpha'] if it % interval == 0 else []) + ['weights']
    assert [c['name'] for c in spy.calls] == expected
    assert all(not torch.equal(a, p) for a, p in zip(alpha0, alpha_params(model)))
    with_alpha = [log for it, log in zip(iters, logs) if it % interval == 0]
    assert all({'alpha.loss', 'alpha.decode.loss_ce', 'loss', 'decode.loss_ce'} <= set(log)
               for log in with_alpha)


def test_gradient_isolation_between_steps(hub):
    model = build_model()
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    model.nas_stage = 'search'
    run_steps(model, ow, hub, range(3))
    for call in spy.calls:
        if call['name'] == 'alpha':
            assert all(g is None for g in call['weight_grads'])
            assert all(g is not None for g in call['alpha_grads'])
            assert any(g.abs().sum() > 0 for g in call['alpha_grads'])
        else:
            assert all(g is None for g in call['alpha_grads'])
            assert not any(call['alpha_requires_grad'])
            assert sum(g is not None for g in call['weight_grads']) > 0


def test_first_order_darts_update_matches_manual_steps(hub):
    """One search iteration equals Adam on α's loss, then AdamW on the weights' loss."""
    model, reference = build_model(), build_model()
    ow = build_optim_wrapper(model, NAS_OPTIM)
    model.nas_stage = 'search'
    batch = make_batch(seed=3)
    hub.update_info('iter', 0)
    model.train_step(batch, ow)

    alpha, weights = alpha_params(reference), weight_params(reference)
    opt_a = torch.optim.Adam(alpha, lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-3)
    opt_w = torch.optim.AdamW(weights, lr=1e-3, weight_decay=1e-4)
    for params, opt in ((alpha, opt_a), (weights, opt_w)):
        data = reference.data_preprocessor(make_batch(seed=3), True)
        loss, _ = reference.parse_losses(reference.loss(**data))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        opt.zero_grad()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_split_batch_gives_alpha_a_held_out_part(hub):
    model = build_model(alpha_data='split', alpha_split=0.25)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    seen = []
    forward = model._run_forward

    def record(data, mode):
        seen.append(len(data['data_samples']))
        return forward(data, mode)

    model._run_forward = record
    model.nas_stage = 'search'
    hub.update_info('iter', 0)
    model.train_step(make_batch(num=4), ow)
    assert seen == [1, 3]  # α: the first quarter; weights: the rest
    model.nas_stage = 'warmup'
    seen.clear()
    model.train_step(make_batch(num=4), ow)
    assert seen == [4]  # no α step: the weights get the whole batch
    model.nas_stage = 'search'
    with pytest.raises(ValueError, match='at least 2 samples'):
        model.train_step(make_batch(num=1), ow)


def test_alpha_free_model_with_plain_wrapper(hub):
    model = build_model(adapter=dict(type='LoRA', rank=3))
    ow = build_optim_wrapper(model, NAS_OPTIM)
    assert type(ow) is OptimWrapper
    spy = StepSpy(model, ow)
    weights0 = [p.detach().clone() for p in weight_params(model)]
    logs = run_steps(model, ow, hub, range(2))
    assert spy.count('weights') == 2
    assert not any(k.startswith('alpha.') for k in logs[-1])
    assert any(not torch.equal(w, p) for w, p in zip(weights0, weight_params(model)))


def test_nas_model_needs_the_alpha_wrapper(hub):
    model = build_model()
    plain = build_optim_wrapper(model, dict(type='OptimWrapper',
                                            optimizer=dict(type='AdamW', lr=1e-3)))
    with pytest.raises(KeyError, match='NASOptimWrapperConstructor'):
        model.train_step(make_batch(), plain)
    with pytest.raises(KeyError, match="got keys \\['generator'\\]"):
        model.train_step(make_batch(), OptimWrapperDict(generator=plain))


@pytest.mark.parametrize('aux_loss', [True, False])
def test_conv_lora_balance_loss_is_added(hub, aux_loss):
    model = build_model(adapter=dict(type='ConvLoRA', rank=3), aux_loss=aux_loss)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    hub.update_info('iter', 0)
    log = model.train_step(make_batch(), ow)
    assert ('loss_moe' in log) is aux_loss
    if aux_loss:
        total = (log['decode.loss_ce'] + log['loss_moe']).item()
        assert log['loss'].item() == pytest.approx(total)
        assert log['loss_moe'].item() > 0
    # The stored per-layer losses were read and cleared either way.
    adapters = [m for m in model.modules() if isinstance(m, ConvLoRA)]
    assert adapters and all(m.aux_loss is None for m in adapters)


def test_bad_options_and_stock_val_step():
    with pytest.raises(ValueError, match='alpha_interval'):
        build_model(alpha_interval=0)
    with pytest.raises(ValueError, match='alpha_data'):
        build_model(alpha_data='heldout')
    with pytest.raises(ValueError, match='alpha_split'):
        build_model(alpha_split=1.)
    model = build_model()
    with pytest.raises(ValueError, match='nas_stage'):
        model.nas_stage = 'discretise'
    model.eval()
    outputs = model.val_step(make_batch(num=1))
    assert outputs[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)

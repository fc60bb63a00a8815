"""NASEncoderDecoder.train_step: both search steps, stages, step counts, isolation, AMP, split."""
import pytest
import torch
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmengine.config import ConfigDict
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict, build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_naslora.models.adapters.conv_lora import ConvLoRA
from mmseg_naslora.models.adapters.arch import is_arch_name
from mmseg_naslora.models.segmentors.nas_encoder_decoder import NASEncoderDecoder, _step_together

SIZE = 64
NAS_OPTIM = dict(
    constructor='NASOptimWrapperConstructor',
    weights=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4)),
    alpha=dict(type='OptimWrapper',
               optimizer=dict(type='Adam', lr=1e-2, betas=(0.5, 0.999), weight_decay=0.)))


def build_model(adapter=None, randomise_b=True, **kwargs) -> NASEncoderDecoder:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type=kwargs.pop('type', 'NASEncoderDecoder'),
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
    return [p for n, p in model.named_parameters() if is_arch_name(n)]


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


STEPS = ('joint', 'alternate')


def run_steps(model, optim_wrapper, plans):
    """Train one batch per ``(stage, step_alpha)`` plan, as NASStageHook drives it."""
    logs = []
    for it, (stage, step_alpha) in enumerate(plans):
        model.set_step_plan(stage, step_alpha)
        logs.append(model.train_step(make_batch(seed=it), optim_wrapper))
    return logs


@pytest.mark.parametrize('search_step', STEPS)
@pytest.mark.parametrize('stage', ['warmup', 'frozen'])
def test_alpha_bitwise_unchanged_outside_search(stage, search_step):
    model = build_model(search_step=search_step)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    alpha0 = [p.detach().clone() for p in alpha_params(model)]
    weights0 = [p.detach().clone() for p in weight_params(model)]
    # step_alpha=True outside the search is ignored: the stage wins.
    logs = run_steps(model, ow, [(stage, True)] * 3)
    assert all(torch.equal(a, p) for a, p in zip(alpha0, alpha_params(model)))
    assert spy.count('weights') == 3 and spy.count('alpha') == 0
    # Adam never ran on α: no state, so no update of any kind touched it.
    assert not ow['alpha'].optimizer.state
    assert any(not torch.equal(w, p) for w, p in zip(weights0, weight_params(model)))
    assert not any(k.startswith('alpha.') for k in logs[-1])
    assert all(p.requires_grad for p in alpha_params(model))
    assert all(p.grad is None for p in alpha_params(model))


@pytest.mark.parametrize('search_step', STEPS)
def test_alpha_steps_exactly_where_the_plan_says(search_step):
    model = build_model(search_step=search_step)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    plans = [('search', True), ('search', False), ('search', True), ('warmup', False),
             ('search', True)]
    alpha0 = [p.detach().clone() for p in alpha_params(model)]
    logs = run_steps(model, ow, plans)
    assert spy.count('weights') == len(plans)
    assert spy.count('alpha') == 3
    expected = []
    for _, step_alpha in plans:
        expected += (['alpha'] if step_alpha else []) + ['weights']
    assert [c['name'] for c in spy.calls] == expected
    assert all(not torch.equal(a, p) for a, p in zip(alpha0, alpha_params(model)))
    assert all({'loss', 'decode.loss_ce'} <= set(log) for log in logs)
    # Only the alternating step has a loss of its own for α.
    assert ('alpha.loss' in logs[0]) is (search_step == 'alternate')


def test_alternate_step_isolates_the_gradients():
    model = build_model(search_step='alternate')
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    run_steps(model, ow, [('search', True)] * 3)
    for call in spy.calls:
        if call['name'] == 'alpha':
            assert all(g is None for g in call['weight_grads'])
            assert all(g is not None for g in call['alpha_grads'])
            assert any(g.abs().sum() > 0 for g in call['alpha_grads'])
        else:
            assert all(g is None for g in call['alpha_grads'])
            assert not any(call['alpha_requires_grad'])
            assert sum(g is not None for g in call['weight_grads']) > 0


def test_joint_step_is_one_backward_that_feeds_both_optimisers():
    model = build_model(search_step='joint')
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    forwards = []
    forward = model._run_forward
    model._run_forward = lambda data, mode: forwards.append(mode) or forward(data, mode)
    run_steps(model, ow, [('search', True)] * 2 + [('warmup', False)])
    assert forwards == ['loss'] * 3
    assert [c['name'] for c in spy.calls] == ['alpha', 'weights'] * 2 + ['weights']
    for call in spy.calls[:4]:
        # Both optimisers see the gradients of the same backward, all present.
        assert all(g is not None for g in call['alpha_grads'] + call['weight_grads'])
        assert any(g.abs().sum() > 0 for g in call['alpha_grads'])
    # In the warm-up α is still in the graph (DDP needs no find_unused_parameters)
    # but its gradient is dropped before the weights step.
    assert all(g is None for g in spy.calls[-1]['alpha_grads'])
    assert all(spy.calls[-1]['alpha_requires_grad'])


def manual_reference(search_step):
    """One search iteration by hand: (α, weights) after Adam on α and AdamW on the weights."""
    reference = build_model()
    alpha, weights = alpha_params(reference), weight_params(reference)
    opt_a = torch.optim.Adam(alpha, lr=1e-2, betas=(0.5, 0.999), weight_decay=0.)
    opt_w = torch.optim.AdamW(weights, lr=1e-3, weight_decay=1e-4)

    def grads(params):
        data = reference.data_preprocessor(make_batch(seed=0), True)
        loss, _ = reference.parse_losses(reference.loss(**data))
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = g

    if search_step == 'joint':
        grads(alpha + weights)  # both at (w_t, α_t)
        opt_a.step()
        opt_w.step()
    else:
        grads(alpha)
        opt_a.step()
        grads(weights)  # at (w_t, α_{t+1})
        opt_w.step()
    return reference


@pytest.mark.parametrize('search_step', STEPS)
def test_search_iteration_matches_first_order_darts_by_hand(search_step):
    model = build_model(search_step=search_step)
    ow = build_optim_wrapper(model, NAS_OPTIM)
    run_steps(model, ow, [('search', True)])
    reference = manual_reference(search_step)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # The two forms differ only in the weights' step (by O(lr_α)).
    other = manual_reference('alternate' if search_step == 'joint' else 'joint')
    for a, b in zip(alpha_params(model), alpha_params(other)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(weight_params(model), weight_params(other)))


@pytest.mark.parametrize('search_step', STEPS)
def test_gradient_accumulation_steps_both_groups_once_per_window(search_step):
    model = build_model(search_step=search_step)
    ow = build_optim_wrapper(model, dict(NAS_OPTIM, accumulative_counts=2))
    spy = StepSpy(model, ow)
    run_steps(model, ow, [('search', True)] * 4)
    assert spy.count('weights') == 2 and spy.count('alpha') == 2
    if search_step == 'joint':
        # The window's gradient: the sum of both halves' (scaled) gradients.
        first = spy.calls[0]['alpha_grads'][0]
        single = build_model(search_step='joint')
        data = single.data_preprocessor(make_batch(seed=0), True)
        loss0, _ = single.parse_losses(single.loss(**data))
        data = single.data_preprocessor(make_batch(seed=1), True)
        loss1, _ = single.parse_losses(single.loss(**data))
        expected = torch.autograd.grad((loss0 + loss1) / 2, alpha_params(single)[0])[0]
        torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-7)


def test_joint_step_needs_equal_accumulation():
    model = build_model(search_step='joint')
    cfg = dict(NAS_OPTIM, weights=dict(NAS_OPTIM['weights'], accumulative_counts=2))
    ow = build_optim_wrapper(model, cfg)
    with pytest.raises(ValueError, match='same accumulative_counts, got 1 and 2'):
        run_steps(model, ow, [('search', True)])
    # The alternating step accumulates each group on its own.
    model = build_model(search_step='alternate')
    run_steps(model, build_optim_wrapper(model, cfg), [('search', True)])


class _CPUAmpWrapper(AmpOptimWrapper):
    """mmengine's AmpOptimWrapper with a CPU GradScaler (it refuses to build without CUDA)."""

    def __init__(self, optimizer, scaler):
        OptimWrapper.__init__(self, optimizer)
        self._scale_update_param = None
        self.loss_scaler = scaler
        self.cast_dtype = None


@pytest.mark.parametrize('poison', [False, True])
def test_amp_wrappers_share_one_scale_update(poison):
    """Both optimisers are unscaled by the scale of the backward; the scale updates once."""
    torch.manual_seed(0)
    a, w = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    ref_a, ref_w = a.detach().clone(), w.detach().clone()
    scaler = torch.amp.GradScaler('cpu', init_scale=2.**4, growth_interval=1)
    wrappers = [_CPUAmpWrapper(torch.optim.SGD([a], lr=0.1), scaler),
                _CPUAmpWrapper(torch.optim.SGD([w], lr=0.1), scaler)]
    loss = (a * w).sum() * (float('inf') if poison else 1.)
    wrappers[-1].backward(loss)
    _step_together(wrappers)
    if poison:  # an overflow skips both steps and backs the scale off once
        assert torch.equal(a.detach(), ref_a) and torch.equal(w.detach(), ref_w)
        assert scaler.get_scale() == 2.**3
    else:  # the true gradients, then one growth step
        torch.testing.assert_close(a.detach(), ref_a - 0.1 * ref_w)
        torch.testing.assert_close(w.detach(), ref_w - 0.1 * ref_a)
        assert scaler.get_scale() == 2.**5
    separate = [_CPUAmpWrapper(torch.optim.SGD([a], lr=0.1), scaler),
                _CPUAmpWrapper(torch.optim.SGD([w], lr=0.1),
                               torch.amp.GradScaler('cpu'))]
    with pytest.raises(TypeError, match='sharing one loss scaler'):
        _step_together(separate)


def test_split_batch_gives_alpha_a_held_out_part():
    model = build_model(alpha_data='split', alpha_split=0.25)
    assert model.search_step == 'alternate'
    ow = build_optim_wrapper(model, NAS_OPTIM)
    seen = []
    forward = model._run_forward

    def record(data, mode):
        seen.append(len(data['data_samples']))
        return forward(data, mode)

    model._run_forward = record
    model.set_step_plan('search', True)
    model.train_step(make_batch(num=4), ow)
    assert seen == [1, 3]  # α: the first quarter; weights: the rest
    model.set_step_plan('warmup', False)
    seen.clear()
    model.train_step(make_batch(num=4), ow)
    assert seen == [4]  # no α step: the weights get the whole batch


def record_forwards(model) -> list:
    """Batch sizes of the model's forwards, in order."""
    seen = []
    forward = model._run_forward

    def record(data, mode):
        seen.append(len(data['data_samples']))
        return forward(data, mode)

    model._run_forward = record
    return seen


def test_split_batch_size_is_checked_at_the_first_batch():
    # Issue 15: batch 1 used to pass the whole warm-up and fail only at the first α step.
    model = build_model(alpha_data='split')
    ow = build_optim_wrapper(model, NAS_OPTIM)
    model.set_step_plan('warmup', False)
    with pytest.raises(ValueError, match=r'first training batch holds 1; set '
                       r'train_dataloader\.batch_size=2 or more'):
        model.train_step(make_batch(num=1), ow)
    # 'same' trains on batches of one as before.
    same = build_model(alpha_data='same')
    same.set_step_plan('warmup', False)
    same.train_step(make_batch(num=1), build_optim_wrapper(same, NAS_OPTIM))


def test_split_handles_the_short_last_batch_of_an_epoch():
    # Issue 15: a dataset of 2k+1 samples at batch 2 ended each epoch with a batch of 1,
    # which crashed the first search epoch with advice to raise a batch size of 2.
    model = build_model(alpha_data='split')
    ow = build_optim_wrapper(model, NAS_OPTIM)
    spy = StepSpy(model, ow)
    seen = record_forwards(model)
    model.set_step_plan('search', True)
    model.train_step(make_batch(num=2), ow)
    assert seen == [1, 1] and spy.count('alpha') == 1
    seen.clear()
    model.train_step(make_batch(num=3, seed=1), ow)  # odd: the weights get the larger half
    assert seen == [1, 2] and spy.count('alpha') == 2
    seen.clear()
    alpha0 = [p.detach().clone() for p in alpha_params(model)]
    log = model.train_step(make_batch(num=1, seed=2), ow)  # the short last batch
    assert seen == [1]  # the weights train on it; α skips this iteration
    assert spy.count('alpha') == 2 and spy.count('weights') == 3
    assert all(torch.equal(a, p) for a, p in zip(alpha0, alpha_params(model)))
    assert not any(k.startswith('alpha.') for k in log)
    seen.clear()
    model.train_step(make_batch(num=2, seed=3), ow)  # the next epoch searches again
    assert seen == [1, 1] and spy.count('alpha') == 3


@pytest.mark.parametrize('num,split,cut', [(2, .5, 1), (3, .5, 1), (5, .5, 2), (4, .25, 1),
                                           (3, .9, 2), (7, .1, 1)])
def test_split_sizes_round_half_down(num, split, cut):
    model = build_model(alpha_data='split', alpha_split=split)
    alpha_part, weight_part = model._split_batch(make_batch(num=num))
    assert len(alpha_part['inputs']) == len(alpha_part['data_samples']) == cut
    assert len(weight_part['inputs']) == num - cut


def test_alpha_free_model_with_plain_wrapper():
    model = build_model(adapter=dict(type='LoRA', rank=3))
    ow = build_optim_wrapper(model, NAS_OPTIM)
    assert type(ow) is OptimWrapper
    spy = StepSpy(model, ow)
    weights0 = [p.detach().clone() for p in weight_params(model)]
    logs = run_steps(model, ow, [('search', True)] * 2)
    assert spy.count('weights') == 2
    assert not any(k.startswith('alpha.') for k in logs[-1])
    assert any(not torch.equal(w, p) for w, p in zip(weights0, weight_params(model)))


def test_nas_model_needs_the_alpha_wrapper():
    model = build_model()
    plain = build_optim_wrapper(model, dict(type='OptimWrapper',
                                            optimizer=dict(type='AdamW', lr=1e-3)))
    with pytest.raises(KeyError, match='NASOptimWrapperConstructor'):
        model.train_step(make_batch(), plain)
    with pytest.raises(KeyError, match="got keys \\['generator'\\]"):
        model.train_step(make_batch(), OptimWrapperDict(generator=plain))


@pytest.mark.parametrize('segmentor', ['AdapterEncoderDecoder', 'NASEncoderDecoder'])
@pytest.mark.parametrize('aux_loss', [True, False])
def test_conv_lora_balance_loss_is_added(segmentor, aux_loss):
    model = build_model(adapter=dict(type='ConvLoRA', rank=3), aux_loss=aux_loss,
                        type=segmentor)
    ow = build_optim_wrapper(model, NAS_OPTIM)
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
    with pytest.raises(ValueError, match='search_step'):
        build_model(search_step='bilevel')
    with pytest.raises(ValueError, match="needs search_step='alternate'"):
        build_model(search_step='joint', alpha_data='split')
    model = build_model()
    assert model.search_step == 'joint' and model.step_plan == ('search', True)
    with pytest.raises(ValueError, match='nas_stage'):
        model.nas_stage = 'discretise'
    model.nas_stage = 'warmup'
    assert model.step_plan == ('warmup', False)
    model.eval()
    outputs = model.val_step(make_batch(num=1))
    assert outputs[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)

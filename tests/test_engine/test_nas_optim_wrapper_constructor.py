"""NASOptimWrapperConstructor: which parameter goes where, paramwise_cfg, schedulers, AMP."""
import glob
import logging
import os.path as osp

import pytest
import torch
from conftest import (REPO_ROOT, TINY_ARCH, TINY_DECODER, TINY_WINDOW, make_binary_dataset,
                      tiny_config)
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper,
                            OptimWrapperDict, build_optim_wrapper)
from mmengine.runner import Runner
from mmseg.registry import MODELS

from mmseg_naslora.engine.optimizers.nas_optim_wrapper_constructor import \
    NASOptimWrapperConstructor
from mmseg_naslora.models.adapters.arch import ALPHA_MARKER

WEIGHTS = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))
ALPHA = dict(type='OptimWrapper',
             optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999), weight_decay=0.))
NAS_SCHEDULES = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '_base_', 'schedules',
                                          'schedule_nas_*.py')))


def build_model(adapter=dict(type='NASLoRA', rank=3)):
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='NASEncoderDecoder',
        backbone=dict(type='SAMViT', arch=TINY_ARCH, img_size=64, window_size=TINY_WINDOW,
                      out_channels=TINY_DECODER['channels'], adapter=adapter),
        decode_head=dict(type='SAMMaskDecoderHead', num_classes=2, out_channels=1,
                         **TINY_DECODER)))


def param_ids(wrapper):
    return [id(p) for group in wrapper.optimizer.param_groups for p in group['params']]


def group_of(wrapper, param):
    return next(g for g in wrapper.optimizer.param_groups
                if any(p is param for p in g['params']))


def test_alpha_only_in_alpha_wrapper_and_frozen_in_neither():
    model = build_model()
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         weights=WEIGHTS, alpha=ALPHA))
    assert isinstance(ow, OptimWrapperDict) and set(ow.keys()) == {'weights', 'alpha'}
    alpha = {id(p) for n, p in model.named_parameters() if n.endswith(ALPHA_MARKER)}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    others = {id(p) for p in model.parameters() if p.requires_grad} - alpha
    assert len(alpha) == TINY_ARCH['depth'] and frozen and others
    weight_ids, alpha_ids = param_ids(ow['weights']), param_ids(ow['alpha'])
    assert set(alpha_ids) == alpha and len(alpha_ids) == len(alpha)
    assert set(weight_ids) == others and len(weight_ids) == len(others)
    assert isinstance(ow['alpha'].optimizer, torch.optim.Adam)
    assert ow['alpha'].optimizer.defaults['betas'] == (0.5, 0.999)
    assert isinstance(ow['weights'].optimizer, torch.optim.AdamW)
    # Without paramwise options every tensor shares one group.
    assert len(ow['weights'].optimizer.param_groups) == 1


def test_shared_alpha_is_added_once():
    model = build_model(dict(type='NASLoRA', rank=3, share_alpha=True))
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         weights=WEIGHTS, alpha=ALPHA))
    assert len(param_ids(ow['alpha'])) == 1


def test_plain_wrapper_for_models_without_alpha():
    model = build_model(dict(type='LoRA', rank=3))
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         weights=WEIGHTS, alpha=ALPHA))
    assert type(ow) is OptimWrapper
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(param_ids(ow)) == trainable and len(param_ids(ow)) == len(trainable)
    # `alpha` may be left out for such models.
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         weights=WEIGHTS))
    assert type(ow) is OptimWrapper


def test_paramwise_custom_keys_apply_to_each_wrapper():
    model = build_model()
    weights = dict(WEIGHTS, paramwise_cfg=dict(custom_keys={
        'decode_head': dict(lr_mult=10.), 'lora_B': dict(lr_mult=2., decay_mult=0.)}))
    alpha = dict(ALPHA, paramwise_cfg=dict(custom_keys={'blocks.1.': dict(lr_mult=0.1)}))
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         weights=weights, alpha=alpha))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(ALPHA_MARKER):
            group = group_of(ow['alpha'], p)
            assert group['lr'] == pytest.approx(1e-4 if 'blocks.1.' in name else 1e-3), name
            continue
        group = group_of(ow['weights'], p)
        if name.startswith('decode_head'):
            assert group['lr'] == pytest.approx(1e-3), name
        elif 'lora_B' in name:
            assert group['lr'] == pytest.approx(2e-4) and group['weight_decay'] == 0., name
        else:
            assert group['lr'] == pytest.approx(1e-4), name
            assert group['weight_decay'] == pytest.approx(1e-4), name
    # Groups with equal options are merged: default, decoder, lora_B.
    assert len(ow['weights'].optimizer.param_groups) == 3
    assert len(ow['alpha'].optimizer.param_groups) == 2


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_frozen_params_are_skipped_without_a_log_flood():
    model = build_model()
    logger = MMLogger.get_current_instance()
    records = _Records()
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        paramwise = dict(custom_keys={'lora_A': dict(lr_mult=1.)})
        build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                        weights=dict(WEIGHTS, paramwise_cfg=paramwise),
                                        alpha=ALPHA))
        ours = list(records.messages)
        records.messages.clear()
        # mmengine's default constructor logs one line per frozen tensor.
        DefaultOptimWrapperConstructor(WEIGHTS, paramwise)(model)
        default = list(records.messages)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    frozen = sum(not p.requires_grad for p in model.parameters())
    assert sum('requires_grad=False' in m for m in default) >= frozen // 2
    assert not any('requires_grad=False' in m for m in ours)
    summary = [m for m in ours if m.startswith('NASOptimWrapperConstructor:')]
    assert len(summary) == 1 and f'{frozen} tensors' in summary[0] and 'frozen' in summary[0]


def test_top_level_options_apply_to_both_wrappers():
    model = build_model()
    ow = build_optim_wrapper(model, dict(
        constructor='NASOptimWrapperConstructor', clip_grad=dict(max_norm=1.),
        weights=dict(WEIGHTS, accumulative_counts=2), alpha=dict(ALPHA, clip_grad=None)))
    assert ow['weights'].clip_grad_kwargs == ow['alpha'].clip_grad_kwargs == dict(max_norm=1.)
    assert ow['weights']._accumulative_counts == 2
    assert ow['alpha']._accumulative_counts == 1
    # What tools/train.py --amp writes switches both entries to AMP.
    ctor = NASOptimWrapperConstructor(dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                           weights=WEIGHTS, alpha=ALPHA))
    for cfg in (ctor.weights_cfg, ctor.alpha_cfg):
        assert cfg['type'] == 'AmpOptimWrapper' and cfg['loss_scale'] == 'dynamic'


def test_config_errors_name_the_key():
    model = build_model()
    with pytest.raises(KeyError, match='optim_wrapper.alpha=dict'):
        build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                        weights=WEIGHTS))
    with pytest.raises(KeyError, match="move 'optimizer' into 'weights'"):
        NASOptimWrapperConstructor(dict(weights=WEIGHTS, optimizer=dict(type='SGD')))
    with pytest.raises(KeyError, match="missing: 'weights'"):
        NASOptimWrapperConstructor(dict(alpha=ALPHA))
    with pytest.raises(ValueError, match='paramwise_cfg into'):
        NASOptimWrapperConstructor(dict(weights=WEIGHTS), paramwise_cfg=dict())
    with pytest.raises(KeyError, match="'optimizer' entry"):
        NASOptimWrapperConstructor(dict(weights=WEIGHTS, alpha=dict(type='OptimWrapper')))


def test_two_amp_wrappers_share_one_loss_scaler(monkeypatch):
    """The joint step scales one backward for both optimisers: one GradScaler for both."""
    # AmpOptimWrapper refuses to be built without a GPU; the scaler itself needs none.
    monkeypatch.setattr('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                        lambda: True)
    model = build_model()
    ow = build_optim_wrapper(model, dict(constructor='NASOptimWrapperConstructor',
                                         type='AmpOptimWrapper', loss_scale='dynamic',
                                         weights=WEIGHTS, alpha=ALPHA))
    assert isinstance(ow, OptimWrapperDict)
    weights, alpha = ow['weights'], ow['alpha']
    assert isinstance(weights, AmpOptimWrapper) and isinstance(alpha, AmpOptimWrapper)
    assert alpha.loss_scaler is weights.loss_scaler
    # Each keeps its own optimiser over its own parameters.
    assert alpha.optimizer is not weights.optimizer
    assert not set(param_ids(alpha)) & set(param_ids(weights))
    # Two independently built AMP wrappers (the entries' own types) share it as well.
    ow = build_optim_wrapper(model, dict(
        constructor='NASOptimWrapperConstructor',
        weights=dict(WEIGHTS, type='AmpOptimWrapper'),
        alpha=dict(ALPHA, type='AmpOptimWrapper', loss_scale=512.)))
    assert ow['alpha'].loss_scaler is ow['weights'].loss_scaler


@pytest.mark.parametrize('amp_key', ['weights', 'alpha'])
def test_mixing_amp_and_plain_wrappers_is_refused(monkeypatch, amp_key):
    monkeypatch.setattr('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                        lambda: True)
    entries = dict(weights=WEIGHTS, alpha=ALPHA)
    entries[amp_key] = dict(entries[amp_key], type='AmpOptimWrapper')
    with pytest.raises(TypeError, match='both be AmpOptimWrapper or neither') as info:
        build_optim_wrapper(build_model(), dict(constructor='NASOptimWrapperConstructor',
                                                **entries))
    assert "type='AmpOptimWrapper' at the top level" in str(info.value)


def test_nas_schedules_exist():
    names = {osp.basename(p) for p in NAS_SCHEDULES}
    assert {'schedule_nas_2k.py', 'schedule_nas_12e.py', 'schedule_nas_28e.py',
            'schedule_nas_28k.py', 'schedule_nas_40e.py'} <= names


@pytest.mark.parametrize('path', NAS_SCHEDULES, ids=osp.basename)
def test_nas_schedules_give_alpha_no_weight_decay(path):
    """softmax(α) is shift-invariant: decay would only pull α back to uniform."""
    cfg = Config.fromfile(path)
    assert cfg.optim_wrapper.constructor == 'NASOptimWrapperConstructor'
    assert cfg.optim_wrapper.alpha.optimizer.weight_decay == 0.
    # And every α group of the built optimiser has it (no paramwise rule adds any).
    ow = build_optim_wrapper(build_model(), cfg.optim_wrapper)
    groups = ow['alpha'].optimizer.param_groups
    assert groups and all(g['weight_decay'] == 0. for g in groups)
    assert ow['weights'].optimizer.defaults['weight_decay'] > 0


def test_dict_param_schedulers_drive_each_wrapper(tmp_path):
    """``param_scheduler=dict(weights=[...], alpha=[...])`` through the Runner."""
    data = make_binary_dataset(str(tmp_path / 'data'))
    cfg_path = tiny_config(
        str(tmp_path / 'cfg.py'), data,
        base='configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py', max_iters=4,
        extra='\n'.join([
            'optim_wrapper = dict(weights=dict(optimizer=dict(lr=1e-3)))',
            'param_scheduler = dict(',
            "    weights=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, "
            'end=4)],',
            "    alpha=[dict(type='MultiStepLR', milestones=[3], gamma=0.5, by_epoch=False)])",
            "custom_hooks = [dict(type='NASStageHook', warmup=1, by_epoch=False),",
            "                dict(type='NASAlphaLoggerHook', interval=1)]",
            'train_cfg = dict(max_iters=4, val_interval=100)',
        ]))
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    lrs = []
    runner.register_hook(_LrRecorder(lrs), priority='LOWEST')
    runner.train()
    assert isinstance(runner.optim_wrapper, OptimWrapperDict)
    assert set(runner.param_schedulers) == {'weights', 'alpha'}
    weights_lr = [w for w, _ in lrs]
    alpha_lr = [a for _, a in lrs]
    # Weights: LinearLR 0.1 -> 1 (mmengine reaches the end factor at end - 1);
    # α (2e-3 in schedule_nas_2k): halved from iteration 3 on.
    assert weights_lr == pytest.approx([1e-4, 4e-4, 7e-4, 1e-3])
    assert alpha_lr == pytest.approx([2e-3, 2e-3, 2e-3, 1e-3])
    assert osp.isfile(osp.join(cfg.work_dir, 'iter_4.pth'))


class _LrRecorder(Hook):
    """Records (weights lr, alpha lr) before each training iteration."""

    def __init__(self, out):
        self.out = out

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        lrs = runner.optim_wrapper.get_lr()
        self.out.append((lrs['weights.lr'][0], lrs['alpha.lr'][0]))

"""NASStageHook (the schedule) and NASAlphaLoggerHook (α statistics) in real (tiny) runs.

Stages and step plans, α statistics, figures, ``nas_arch.json``, checkpoint meta and
resume.
"""
import json
import logging
import math
import os.path as osp
import uuid

import numpy as np
import pytest
import torch
from conftest import make_binary_dataset, tiny_config
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from mmseg_naslora.engine.hooks import NASAlphaLoggerHook, NASStageHook
from mmseg_naslora.engine.hooks.nas_alpha_logger_hook import ARCH_FILE, gradient_snr
from mmseg_naslora.engine.hooks.nas_stage_hook import SEARCH_START_KEY
from mmseg_naslora.models.adapters.arch import ALPHA_MARKER, arch_layers, arch_parameters
from mmseg_naslora.utils.model import unwrap_model
from mmseg_naslora.visualization import HEATMAP_FILE, TRAJECTORY_FILE, short_labels

KVASIR_NAS = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'
ISIC_NAS = 'configs/naslora/naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py'
LABELS = ['blocks.0', 'blocks.1']
NUM_OPS = 8
# Deterministic training data (no random augmentation), so runs can be compared.
FIXED_TRAIN = '\n'.join([
    "fixed_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),",
    "                  dict(type='Resize', scale=crop_size, keep_ratio=False),",
    "                  dict(type='PackSegInputs')]",
    'train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,',
    '                        dataset=dict(data_root=data_root, pipeline=fixed_pipeline))',
    'optim_wrapper = dict(weights=dict(optimizer=dict(lr=1e-3)),',
    '                     alpha=dict(optimizer=dict(lr=5e-2)))',
])


def hooks_cfg(logger_interval=1, **stage):
    """``custom_hooks = [NASStageHook(**stage), NASAlphaLoggerHook(interval)]``."""
    args = ', '.join(f'{k}={v!r}' for k, v in stage.items())
    return (f"custom_hooks = [dict(type='NASStageHook', {args}), "
            f"dict(type='NASAlphaLoggerHook', interval={logger_interval})]")


def softmax(alpha: torch.Tensor) -> np.ndarray:
    return torch.softmax(alpha.detach().double().flatten(), -1).numpy()


class Recorder(Hook):
    """Records what each training iteration sees and what the logger published after it.

    Runs after NASStageHook (NORMAL) has set the plan and after NASAlphaLoggerHook
    (BELOW_NORMAL) has published its statistics, before the checkpoint (VERY_LOW).
    """
    priority = 'LOW'

    def __init__(self):
        self.stages, self.plans, self.alphas, self.alpha_states = [], [], [], []
        self.after = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = unwrap_model(runner.model)
        self.stages.append(model.nas_stage)
        self.plans.append((model.step_plan.stage, model.step_plan.step_alpha))
        self.alphas.append([p.detach().clone() for _, p in arch_parameters(model)])
        self.alpha_states.append(len(runner.optim_wrapper['alpha'].optimizer.state))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = unwrap_model(runner.model)
        hub = runner.message_hub
        layers = arch_layers(model)
        self.after.append(dict(
            iter=runner.iter,
            weights={label: softmax(layer.alpha) for label, layer in
                     zip(short_labels([la.name for la in layers]), layers)},
            primitives=[layer.primitives for layer in layers],
            scalars={k: float(v.current()) for k, v in hub.log_scalars.items()
                     if k.startswith(('nas/', 'train/nas.'))},
            argmax=dict(hub.get_info('nas/argmax') or {})))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_binary_dataset(str(tmp_path_factory.mktemp('nas_hook_data')))


def train(tmp_path, data_root, extra, base=KVASIR_NAS, work='work', resume=False,
          max_iters=6, hooks=()):
    cfg_path = tiny_config(str(tmp_path / f'{work}.py'), data_root, base=base,
                           max_iters=max_iters, extra=extra)
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(tmp_path / work)
    cfg.resume = resume
    cfg.train_cfg.val_interval = 1000  # no validation: it does not touch α
    cfg.visualizer.name = f'vis_{uuid.uuid4().hex}'
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()
    return runner


def capture_log(fn):
    """Messages the current MMLogger emits while ``fn()`` runs."""
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        fn()
    finally:
        logger.removeHandler(handler)
    return messages


# Arguments and helpers, no run -----------------------------------------------
def test_stage_rules_and_bad_arguments():
    hook = NASStageHook(warmup=2, by_epoch=False, freeze_after=4)
    assert [hook.stage_at(i) for i in range(6)] == ['warmup'] * 2 + ['search'] * 2 + \
        ['frozen'] * 2
    assert NASStageHook(warmup=0).stage_at(0) == 'search'
    with pytest.raises(ValueError, match='freeze_after'):
        NASStageHook(warmup=3, freeze_after=3)
    with pytest.raises(ValueError, match='warmup'):
        NASStageHook(warmup=-1)
    with pytest.raises(TypeError, match='unexpected'):
        NASStageHook(warmup=1, intervall=5)
    with pytest.raises(ValueError, match='interval'):
        NASAlphaLoggerHook(interval=0)
    with pytest.raises(ValueError, match='max_history'):
        NASAlphaLoggerHook(max_history=1)
    logger = NASAlphaLoggerHook()
    assert (logger.interval, logger.plot, logger.max_history) == (50, True, 500)


@pytest.mark.parametrize('old', [dict(interval=1), dict(interval=20, plot=False, max_history=9)])
def test_old_logging_arguments_point_to_the_logger_hook(old):
    """The statistics moved out of NASStageHook: the error says what to write instead."""
    moved = ', '.join(f'{k}={v!r}' for k, v in sorted(old.items()))
    for build in (lambda: NASStageHook(warmup=2, by_epoch=False, **old),
                  lambda: HOOKS.build(dict(type='NASStageHook', warmup=2, **old))):
        with pytest.raises(TypeError, match='NASAlphaLoggerHook') as info:
            build()
        message = str(info.value)
        assert f"dict(type='NASAlphaLoggerHook', {moved})" in message
        assert 'custom_hooks' in message and str(sorted(old)) in message


def test_short_labels():
    assert short_labels(['backbone.encoder.blocks.0.attn.qkv',
                         'backbone.encoder.blocks.11.attn.qkv']) == ['blocks.0', 'blocks.11']
    assert short_labels(['a.blocks.0.attn.qkv', 'a.blocks.1.mlp.lin1']) == \
        ['blocks.0.attn.qkv', 'blocks.1.mlp.lin1']
    assert short_labels(['backbone.blocks.3.attn.qkv']) == ['backbone.blocks.3.attn.qkv']
    assert short_labels([]) == []


def numpy_snr(samples: np.ndarray) -> float:
    """The documented convention, independently: per entry |mean| / std (ddof 1, the
    unbiased std), std 0 counting 0 when the mean is 0 and skipped otherwise; the mean
    over the counted entries."""
    mean, std = np.abs(samples.mean(0)), samples.std(0, ddof=1)
    counted = [m / s for m, s in zip(mean.ravel(), std.ravel()) if s > 0]
    counted += [0.] * int(np.sum((std == 0) & (mean == 0)))
    return float(np.mean(counted))


def test_gradient_snr_worked_examples():
    def snr(rows):
        return gradient_snr([torch.tensor(r, dtype=torch.float32) for r in rows])

    # Two samples; entry 0 sees 1 and 3 (mean 2, std sqrt 2), entry 1 sees 2 and 2
    # (std 0, mean 2: skipped): sqrt(2).
    rows = [[1., 2.], [3., 2.]]
    assert snr(rows) == pytest.approx(2 / math.sqrt(2), rel=1e-12)
    assert snr(rows) == pytest.approx(numpy_snr(np.array(rows)), rel=1e-12)
    # Three samples of five entries, by hand:
    #   [1, 3, 2]   mean 2, std 1          -> 2
    #   [1, -1, 3]  mean 1, std 2          -> 0.5
    #   [0, 0, 0]   std 0, mean 0          -> 0 (counted)
    #   [2, 2, 2]   std 0, mean 2          -> skipped
    #   [-4, 0, -2] |mean| 2, std 2        -> 1
    # mean over the four counted entries: (2 + 0.5 + 0 + 1) / 4 = 0.875.
    rows = [[1., 1., 0., 2., -4.], [3., -1., 0., 2., 0.], [2., 3., 0., 2., -2.]]
    assert snr(rows) == pytest.approx(0.875, rel=1e-12)
    assert snr(rows) == pytest.approx(numpy_snr(np.array(rows)), rel=1e-12)
    # Any shape: the α of a layer may be (1, ops).
    assert gradient_snr([torch.tensor(r).view(1, 5) for r in rows]) == pytest.approx(0.875)
    # Random samples against numpy.
    rng = np.random.default_rng(0)
    rows = rng.normal(0.3, 1., size=(7, 8))
    assert gradient_snr([torch.from_numpy(r).float() for r in rows]) == pytest.approx(
        numpy_snr(rows.astype(np.float32).astype(np.float64)), rel=1e-9)
    # Degenerate cases.
    assert snr([[0., 0.], [0., 0.]]) == 0.  # never changed, exactly zero (B = 0)
    assert snr([[1., -2.], [1., -2.]]) is None  # every entry skipped
    assert snr([[1., 2.]]) is None  # fewer than 2 samples
    assert gradient_snr([]) is None


# Iteration-based run: stages, statistics, figures, meta ---------------------------
def test_iteration_run_stages_statistics_figures_and_meta(tmp_path, data_root):
    recorder = Recorder()
    runner = train(tmp_path, data_root, max_iters=7, hooks=[recorder], extra='\n'.join([
        FIXED_TRAIN,
        hooks_cfg(1, warmup=2, by_epoch=False, freeze_after=5),
        'default_hooks = dict(checkpoint=dict(interval=3, save_best=None))',
    ]))
    model = unwrap_model(runner.model)
    assert model.search_step == 'joint'
    assert recorder.stages == ['warmup'] * 2 + ['search'] * 3 + ['frozen'] * 2
    assert recorder.plans == [('warmup', False)] * 2 + [('search', True)] * 3 + \
        [('frozen', False)] * 2
    alphas = recorder.alphas
    # α: untouched in warmup, moved by the search, untouched again once frozen.
    assert all(torch.equal(a, b) for a, b in zip(alphas[0], alphas[2]))
    assert recorder.alpha_states[:3] == [0, 0, 0]  # Adam never ran on α in the warm-up
    assert all(not torch.equal(a, b) for a, b in zip(alphas[2], alphas[5]))
    final = [p for _, p in arch_parameters(model)]
    assert all(torch.equal(a, b) for a, b in zip(alphas[5], final))
    assert runner.message_hub.get_info(SEARCH_START_KEY) == 2

    work = runner.work_dir
    for name in (HEATMAP_FILE, TRAJECTORY_FILE):
        with open(osp.join(work, name), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
        assert osp.getsize(osp.join(work, name)) > 5000

    # Statistics after every iteration (interval 1), from that iteration's α.
    hub = runner.message_hub
    assert [rec['iter'] for rec in recorder.after] == list(range(7))
    for rec in recorder.after:
        scalars = rec['scalars']
        assert list(rec['weights']) == LABELS
        for (label, probs), ops in zip(rec['weights'].items(), rec['primitives']):
            entropy = float(-(probs * np.log(probs)).sum())
            assert 0 < entropy <= math.log(NUM_OPS) + 1e-6
            assert scalars[f'nas/{label}/entropy'] == pytest.approx(entropy, abs=1e-5)
            assert scalars[f'nas/{label}/max_weight'] == pytest.approx(probs.max(), abs=1e-6)
            assert scalars[f'nas/{label}/argmax'] == int(probs.argmax())
            assert rec['argmax'][label] == ops[int(probs.argmax())]
        for key in ('entropy', 'max_weight'):
            layer_mean = np.mean([scalars[f'nas/{label}/{key}'] for label in LABELS])
            assert scalars[f'train/nas.{key}'] == pytest.approx(layer_mean, abs=1e-6)
    # One backward per interval of 1 iteration: too few samples for a gradient SNR.
    assert not [k for k in hub.log_scalars if k.endswith('grad_snr')]
    assert set(hub.get_info('nas/argmax')) == set(LABELS)

    ckpt = torch.load(osp.join(work, 'iter_6.pth'), map_location='cpu', weights_only=False)
    arch = ckpt['meta']['nas_arch']
    assert arch['stage'] == 'frozen' and len(arch['primitives']) == NUM_OPS
    assert [layer['label'] for layer in arch['layers']] == LABELS
    for layer in arch['layers']:
        assert sum(layer['weights']) == pytest.approx(1., abs=1e-5)
        assert layer['argmax'] == layer['primitives'][
            max(range(NUM_OPS), key=layer['weights'].__getitem__)]
        alpha = ckpt['state_dict'][f'{layer["name"]}.{ALPHA_MARKER}']
        assert layer['weights'] == pytest.approx(alpha.softmax(-1).tolist(), abs=1e-5)
    history = ckpt['meta']['nas_alpha_history']
    assert history['iters'].tolist() == list(range(7))
    assert history['weights'].shape == (7, len(LABELS), NUM_OPS)
    assert history['layers'] == [layer['name'] for layer in arch['layers']]
    assert history['primitives'] == arch['primitives']
    # Point s is softmax(α) after s iterations: what iteration s started from.
    for step in range(7):
        expected = np.stack([softmax(a) for a in alphas[step]])
        np.testing.assert_allclose(history['weights'][step].numpy(), expected, atol=1e-6)

    # nas_arch.json, rewritten after training; α is frozen since iteration 5, so its
    # architecture is the last checkpoint's.
    with open(osp.join(work, ARCH_FILE)) as f:
        arch_file = json.load(f)
    assert arch_file['iter'] == 7 and arch_file['stage'] == 'frozen'
    assert arch_file['primitives'] == arch['primitives']
    assert arch_file['layers'] == arch['layers']
    assert [layer['argmax'] for layer in arch_file['layers']] == \
        [layer['argmax'] for layer in arch['layers']]

    with pytest.raises(ValueError, match='by_epoch=False'):
        NASStageHook(warmup=1, by_epoch=True).before_train(runner)


# Epoch-based run: the canonical ISIC config ------------------------------------------
def test_epoch_based_isic_config_gradient_snr_and_checks(tmp_path, data_root):
    recorder = Recorder()
    runner = train(tmp_path, data_root, base=ISIC_NAS, hooks=[recorder], extra='\n'.join([
        FIXED_TRAIN,
        "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, "
        'val_interval=100)',
        hooks_cfg(3, warmup=1, by_epoch=True),
        "default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, save_best=None))",
    ]))
    # 6 images, batch 2: 3 iterations per epoch, the first epoch is the warm-up.
    assert recorder.stages == ['warmup'] * 3 + ['search'] * 3
    assert recorder.plans == [('warmup', False)] * 3 + [('search', True)] * 3
    assert runner.message_hub.get_info(SEARCH_START_KEY) == 3
    ckpt = torch.load(osp.join(runner.work_dir, 'epoch_2.pth'), map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['nas_arch']['stage'] == 'search'
    assert osp.isfile(osp.join(runner.work_dir, HEATMAP_FILE))
    assert osp.isfile(osp.join(runner.work_dir, ARCH_FILE))

    # Statistics every 3 iterations (after iterations 2 and 5), each from the 3
    # backwards of its interval: the last interval is the search epoch.
    hub = runner.message_hub
    for label in LABELS:
        snr = hub.get_scalar(f'nas/{label}/grad_snr').data[0]
        assert len(snr) == 2 and np.isfinite(snr).all() and (snr >= 0).all(), (label, snr)
        assert snr[-1] > 0  # α had a gradient to measure in the search
        max_weight = hub.get_scalar(f'nas/{label}/max_weight').data[0]
        assert len(max_weight) == 2
        probs = recorder.after[-1]['weights'][label]
        assert max_weight[-1] == pytest.approx(probs.max(), abs=1e-6)
        assert 1 / NUM_OPS - 1e-6 <= max_weight[-1] <= 1
    search_snr = hub.get_scalar('train/nas.grad_snr').current()
    assert search_snr == pytest.approx(
        np.mean([hub.get_scalar(f'nas/{label}/grad_snr').current() for label in LABELS]))

    messages = capture_log(lambda: NASStageHook(warmup=2, by_epoch=True).before_train(runner))
    assert any('α will never be searched' in m for m in messages)


# Resume -------------------------------------------------------------------------------
@pytest.mark.parametrize('search_step', ['joint', 'alternate'])
def test_resume_in_search_stage_matches_an_uninterrupted_run(tmp_path, data_root, search_step):
    """Stop in stage 2, resume, finish: α and all weights equal the straight run.

    The straight run also shows the plan the model is given: with alpha_interval=2, α
    steps exactly on the even iterations of the search, never in the warm-up.
    """
    extra = '\n'.join([
        FIXED_TRAIN,
        f"model['search_step'] = {search_step!r}",
        "model['alpha_interval'] = 2",
        hooks_cfg(1, warmup=3, by_epoch=False),
        'default_hooks = dict(checkpoint=dict(interval=100, save_best=None))',
        'param_scheduler = dict(',
        "    weights=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8)],",
        "    alpha=[dict(type='MultiStepLR', milestones=[6], gamma=0.5, by_epoch=False, "
        'begin=0, end=8)])',
    ])
    plan_seen = Recorder()
    straight = train(tmp_path, data_root, extra, work='straight', max_iters=8,
                     hooks=[plan_seen])
    assert unwrap_model(straight.model).search_step == search_step
    assert plan_seen.plans == [('warmup', False)] * 3 + [('search', i % 2 == 0)
                                                         for i in range(3, 8)]
    # α moves in exactly the iterations whose plan steps it (4 and 6).
    alphas = plan_seen.alphas + [[p.detach() for _, p in
                                  arch_parameters(unwrap_model(straight.model))]]
    moved = [any(not torch.equal(a, b) for a, b in zip(alphas[i], alphas[i + 1]))
             for i in range(8)]
    assert moved == [step_alpha for _, step_alpha in plan_seen.plans]

    first = train(tmp_path, data_root, extra, work='resumed', max_iters=5)
    assert unwrap_model(first.model).nas_stage == 'search'
    recorder = Recorder()
    resumed = train(tmp_path, data_root, extra,
                    work='resumed', max_iters=8, resume=True, hooks=[recorder])
    assert recorder.stages == ['search'] * 3
    assert recorder.plans == [('search', False), ('search', True), ('search', False)]
    expected = straight.model.state_dict()
    got = resumed.model.state_dict()
    assert expected.keys() == got.keys()
    alpha_keys = [k for k in expected if k.endswith(ALPHA_MARKER)]
    assert alpha_keys and any('lora_B' in k for k in expected)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # α did move after the resume, and its trajectory kept the first part.
    assert any(not torch.equal(recorder.alphas[0][i], got[k]) for i, k in enumerate(alpha_keys))
    ckpt = torch.load(osp.join(resumed.work_dir, 'iter_8.pth'), map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['nas_alpha_history']['iters'].tolist() == list(range(9))
    assert ckpt['meta']['nas_arch']['layers'] == torch.load(
        osp.join(straight.work_dir, 'iter_8.pth'), map_location='cpu',
        weights_only=False)['meta']['nas_arch']['layers']

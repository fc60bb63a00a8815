"""NASStageHook in real (tiny) runs: stages, α statistics, figures, meta, resume."""
import logging
import os.path as osp
import uuid

import pytest
import torch
from conftest import make_binary_dataset, tiny_config
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from mmseg_naslora.engine.hooks.nas_stage_hook import (HEATMAP_FILE, TRAJECTORY_FILE,
                                                       NASStageHook, _short_labels)
from mmseg_naslora.models.adapters.nas_lora import ALPHA_MARKER

KVASIR_NAS = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'
ISIC_NAS = 'configs/naslora/naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py'
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


class Recorder(Hook):
    """Records the stage and α seen by each training iteration."""
    priority = 'LOW'  # after NASStageHook (NORMAL) has set the stage

    def __init__(self):
        self.stages, self.alphas = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        self.stages.append(model.nas_stage)
        self.alphas.append([p.detach().clone() for n, p in model.named_parameters()
                            if n.endswith(ALPHA_MARKER)])


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


def test_stage_rules_and_bad_arguments():
    hook = NASStageHook(warmup=2, by_epoch=False, freeze_after=4)
    assert [hook.stage_at(i) for i in range(6)] == ['warmup'] * 2 + ['search'] * 2 + \
        ['frozen'] * 2
    assert NASStageHook(warmup=0).stage_at(0) == 'search'
    with pytest.raises(ValueError, match='freeze_after'):
        NASStageHook(warmup=3, freeze_after=3)
    with pytest.raises(ValueError, match='warmup'):
        NASStageHook(warmup=-1)
    with pytest.raises(ValueError, match='interval'):
        NASStageHook(interval=0)
    assert _short_labels(['backbone.encoder.blocks.0.attn.qkv',
                          'backbone.encoder.blocks.11.attn.qkv']) == ['blocks.0', 'blocks.11']


def test_iteration_run_stages_statistics_figures_and_meta(tmp_path, data_root):
    recorder = Recorder()
    runner = train(tmp_path, data_root, max_iters=7, hooks=[recorder], extra='\n'.join([
        FIXED_TRAIN,
        "custom_hooks = [dict(type='NASStageHook', warmup=2, by_epoch=False, "
        'freeze_after=5, interval=1)]',
        'default_hooks = dict(checkpoint=dict(interval=3, save_best=None))',
    ]))
    assert recorder.stages == ['warmup'] * 2 + ['search'] * 3 + ['frozen'] * 2
    alphas = recorder.alphas
    # α: untouched in warmup, moved by the search, untouched again once frozen.
    assert all(torch.equal(a, b) for a, b in zip(alphas[0], alphas[2]))
    assert all(not torch.equal(a, b) for a, b in zip(alphas[2], alphas[5]))
    final = [p for n, p in runner.model.named_parameters() if n.endswith(ALPHA_MARKER)]
    assert all(torch.equal(a, b) for a, b in zip(alphas[5], final))

    work = runner.work_dir
    for name in (HEATMAP_FILE, TRAJECTORY_FILE):
        with open(osp.join(work, name), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
        assert osp.getsize(osp.join(work, name)) > 5000

    hub = runner.message_hub
    entropy = hub.get_scalar('nas/blocks.0/entropy').current()
    assert 0 < entropy <= torch.log(torch.tensor(8.)).item() + 1e-6
    assert hub.get_scalar('train/nas.entropy') is not None
    assert set(hub.get_info('nas/argmax')) == {'blocks.0', 'blocks.1'}

    ckpt = torch.load(osp.join(work, 'iter_6.pth'), map_location='cpu', weights_only=False)
    arch = ckpt['meta']['nas_arch']
    assert arch['stage'] == 'frozen' and len(arch['primitives']) == 8
    assert [layer['label'] for layer in arch['layers']] == ['blocks.0', 'blocks.1']
    for layer in arch['layers']:
        assert sum(layer['weights']) == pytest.approx(1., abs=1e-5)
        assert layer['argmax'] == layer['primitives'][
            max(range(8), key=layer['weights'].__getitem__)]
        alpha = ckpt['state_dict'][f'{layer["name"]}.{ALPHA_MARKER}']
        assert layer['weights'] == pytest.approx(alpha.softmax(-1).tolist(), abs=1e-5)
    history = ckpt['meta']['nas_alpha_history']
    assert history['iters'].tolist() == list(range(7))
    assert history['weights'].shape == (7, 2, 8)

    with pytest.raises(ValueError, match='by_epoch=False'):
        NASStageHook(warmup=1, by_epoch=True).before_train(runner)


def test_epoch_based_isic_config_and_checks(tmp_path, data_root):
    recorder = Recorder()
    runner = train(tmp_path, data_root, base=ISIC_NAS, hooks=[recorder], extra='\n'.join([
        FIXED_TRAIN,
        "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, "
        'val_interval=100)',
        "custom_hooks = [dict(type='NASStageHook', warmup=1, by_epoch=True, interval=1)]",
        "default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, save_best=None))",
    ]))
    # 6 images, batch 2: 3 iterations per epoch, the first epoch is the warm-up.
    assert recorder.stages == ['warmup'] * 3 + ['search'] * 3
    ckpt = torch.load(osp.join(runner.work_dir, 'epoch_2.pth'), map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['nas_arch']['stage'] == 'search'
    assert osp.isfile(osp.join(runner.work_dir, HEATMAP_FILE))

    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        NASStageHook(warmup=2, by_epoch=True).before_train(runner)
    finally:
        logger.removeHandler(handler)
    assert any('α will never be searched' in m for m in messages)


def test_resume_in_search_stage_matches_an_uninterrupted_run(tmp_path, data_root):
    """Stop in stage 2, resume, finish: α and all weights equal the straight run."""
    extra = '\n'.join([
        FIXED_TRAIN,
        "model['alpha_interval'] = 2",
        "custom_hooks = [dict(type='NASStageHook', warmup=3, by_epoch=False, interval=1)]",
        'default_hooks = dict(checkpoint=dict(interval=100, save_best=None))',
        'param_scheduler = dict(',
        "    weights=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8)],",
        "    alpha=[dict(type='MultiStepLR', milestones=[6], gamma=0.5, by_epoch=False, "
        'begin=0, end=8)])',
    ])
    straight = train(tmp_path, data_root, extra,
                     work='straight', max_iters=8)
    first = train(tmp_path, data_root, extra,
                  work='resumed', max_iters=5)
    assert first.model.nas_stage == 'search'
    recorder = Recorder()
    resumed = train(tmp_path, data_root, extra,
                    work='resumed', max_iters=8, resume=True, hooks=[recorder])
    assert recorder.stages == ['search'] * 3
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

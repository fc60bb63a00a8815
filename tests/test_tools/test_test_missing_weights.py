"""Testing never scores missing weights; adapter files load the same from any runner."""
import os.path as osp
import subprocess
import sys
import uuid

import pytest
import torch
from conftest import REPO_ROOT, make_binary_dataset, tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.reliability_defaults import RELIABILITY_HOOKS, add_reliability_hooks

STOCK = "custom_imports = dict(imports=['mmseg_naslora'], allow_failed_imports=False)"


def load_cfg(path, work_dir, hooks=True):
    cfg = Config.fromfile(path)
    cfg.work_dir = work_dir
    cfg.visualizer.name = f'vis_{uuid.uuid4().hex}'
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    if hooks:
        add_reliability_hooks(cfg)
    else:  # a config of the user's own, without the schedules' safety hooks
        for name in RELIABILITY_HOOKS:
            cfg.default_hooks.pop(name, None)
    return cfg


@pytest.fixture(scope='module')
def trained(tmp_path_factory, official_sam):
    """One 2-iteration run: ``(config path, data root, work dir, trained model)``."""
    root = tmp_path_factory.mktemp('missing_weights')
    data = make_binary_dataset(str(root / 'data'))
    cfg_path = tiny_config(str(root / 'cfg.py'), data, checkpoint=official_sam[1],
                           max_iters=2, extra=STOCK)
    runner = Runner.from_cfg(load_cfg(cfg_path, str(root / 'work')))
    runner.train()
    return cfg_path, data, str(root / 'work'), runner.model.eval()


def outputs(model, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return model.eval()(x, mode='tensor')


def test_tools_test_with_the_sam_file_is_refused(tmp_path, trained, official_sam):
    cfg_path, _, _, _ = trained
    proc = subprocess.run([sys.executable, 'tools/test.py', cfg_path, official_sam[1],
                           '--work-dir', str(tmp_path / 'test')], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert official_sam[1] in log and 'lacks' in log and 'random values' in log
    assert 'backbone.encoder.blocks.0.attn.proj.bias' in log
    assert 'official-format SAM file' in log and 'adapters.safetensors' in log
    assert 'Dice' not in log.split('lacks')[0].splitlines()[-1]


def test_changed_adapter_blocks_at_test_time_is_refused(tmp_path, trained):
    cfg_path, _, work, _ = trained
    cfg = load_cfg(cfg_path, str(tmp_path / 'test'))
    cfg.model.backbone.adapter_blocks = [0]  # trained with adapters in both blocks
    cfg.load_from = osp.join(work, 'iter_2.pth')
    with pytest.raises(ValueError) as info:
        Runner.from_cfg(cfg).test()
    msg = str(info.value)
    assert 'backbone.encoder.blocks.1.attn.qkv.weight' in msg and 'iter_2.pth' in msg
    assert 'adapter_blocks' in msg and 'qkv.base_layer' in msg


def test_complete_checkpoint_still_tests(tmp_path, trained):
    cfg_path, _, work, model = trained
    cfg = load_cfg(cfg_path, str(tmp_path / 'test'))
    cfg.load_from = osp.join(work, 'iter_2.pth')
    runner = Runner.from_cfg(cfg)
    runner.test()
    assert torch.allclose(outputs(model), outputs(runner.model), atol=1e-6)


@pytest.mark.parametrize('hooks', [False, True], ids=['stock_runner', 'tools_hooks'])
def test_adapter_file_loads_the_same_from_a_stock_runner(tmp_path, trained, hooks):
    """README route: own config, custom_imports, load_from=adapters.safetensors, no hooks."""
    cfg_path, _, work, model = trained
    cfg = load_cfg(cfg_path, str(tmp_path / 'test'), hooks=hooks)
    assert ('adapter_checkpoint' in cfg.default_hooks) == hooks
    cfg.load_from = osp.join(work, 'adapters.safetensors')
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert torch.allclose(outputs(model), outputs(runner.model), atol=1e-6)
    assert metrics


def test_adapter_file_through_a_stock_runner_checks_the_base(tmp_path, trained, official_sam):
    """The config checks apply without the hook too (strict by default)."""
    cfg_path, _, work, _ = trained
    cfg = load_cfg(cfg_path, str(tmp_path / 'test'), hooks=False)
    cfg.model.backbone.adapter = dict(type='LoRA', rank=4, lora_alpha=32)
    cfg.load_from = osp.join(work, 'adapters.safetensors')
    with pytest.raises(ValueError, match='does not match the base model') as info:
        Runner.from_cfg(cfg).test()
    assert 'adapters.safetensors' in str(info.value)


def test_the_hooks_strict_false_turns_a_config_mismatch_into_a_warning(tmp_path, trained):
    """``default_hooks.adapter_checkpoint.strict=False`` reaches the model's own checks."""
    cfg_path, _, work, model = trained
    cfg = load_cfg(cfg_path, str(tmp_path / 'strict'))
    cfg.model.backbone.adapter.lora_alpha = 16  # same tensors, another scaling
    cfg.load_from = osp.join(work, 'adapters.safetensors')
    with pytest.raises(ValueError, match='model.backbone.adapter'):
        Runner.from_cfg(cfg).test()
    cfg = load_cfg(cfg_path, str(tmp_path / 'lenient'))
    cfg.model.backbone.adapter.lora_alpha = 16
    cfg.default_hooks.adapter_checkpoint.strict = False
    cfg.load_from = osp.join(work, 'adapters.safetensors')
    runner = Runner.from_cfg(cfg)
    runner.test()  # loads, with a warning
    trained_lora = model.backbone.encoder.blocks[0].attn.qkv
    lenient_lora = runner.model.backbone.encoder.blocks[0].attn.qkv
    assert torch.equal(trained_lora.lora_B.weight, lenient_lora.lora_B.weight)
    assert lenient_lora.scaling == pytest.approx(trained_lora.scaling / 2)

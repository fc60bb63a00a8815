"""--resume with another set of trainable parameters (e.g. adapter_blocks) says what changed."""
import os.path as osp

import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.engine.resume_check import META_KEY, ResumeMismatchError


def make_cfg(tmp_path, data_root, sam_path, name, max_iters=2, adapter_blocks=None):
    path = tiny_config(str(tmp_path / f'{name}.py'), data_root, checkpoint=sam_path,
                       max_iters=max_iters)
    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path / name)
    cfg.model.backbone.adapter_blocks = adapter_blocks
    add_reliability_hooks(cfg)
    return cfg


@pytest.mark.parametrize('stamped', [True, False], ids=['names-in-meta', 'older-checkpoint'])
def test_resume_with_changed_adapter_blocks_names_the_parameters(
        tmp_path, binary_dataset, official_sam, stamped):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, 'run')
    Runner.from_cfg(cfg).train()
    ckpt_path = osp.join(cfg.work_dir, 'iter_2.pth')
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert any('lora_A' in n for group in ckpt['meta'][META_KEY][''] for n in group)
    if not stamped:  # a checkpoint written before the names were stamped
        del ckpt['meta'][META_KEY]
        torch.save(ckpt, ckpt_path)
    resumed = make_cfg(tmp_path, binary_dataset, sam_path, 'resumed', max_iters=4,
                       adapter_blocks=[0])
    resumed.work_dir, resumed.resume, resumed.load_from = cfg.work_dir, True, ckpt_path
    # Used to be torch's "loaded state dict contains a parameter group that doesn't match
    # the size of optimizer's group", naming nothing.
    with pytest.raises(ResumeMismatchError) as info:
        Runner.from_cfg(resumed).train()
    msg = str(info.value)
    assert msg.startswith(f'cannot resume from this checkpoint ({ckpt_path})')
    # Block 1 lost its adapter: its LoRA factors are gone, its qkv is a plain Linear again.
    only_ckpt = msg.split("only in the checkpoint's model: ")[1].split('\n')[0]
    only_cfg = msg.split("only in the config's model: ")[1].split('\n')[0]
    assert 'backbone.encoder.blocks.1.attn.qkv.lora_A.weight' in only_ckpt, msg
    assert 'backbone.encoder.blocks.1.attn.qkv.weight' in only_cfg, msg
    assert 'blocks.0' not in only_ckpt + only_cfg  # block 0 is adapted in both
    assert 'adapter_blocks' in msg and 'load_from=CHECKPOINT' in msg and '--work-dir' in msg


def test_the_advised_load_from_starts_a_new_run(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = make_cfg(tmp_path, binary_dataset, sam_path, 'run')
    Runner.from_cfg(cfg).train()
    fresh = make_cfg(tmp_path, binary_dataset, sam_path, 'fresh', adapter_blocks=[0])
    fresh.load_from = osp.join(cfg.work_dir, 'iter_2.pth')
    Runner.from_cfg(fresh).train()
    assert osp.isfile(osp.join(fresh.work_dir, 'iter_2.pth'))
    # An unchanged resume still passes the check.
    same = make_cfg(tmp_path, binary_dataset, sam_path, 'same', max_iters=4)
    same.work_dir, same.resume = cfg.work_dir, True
    runner = Runner.from_cfg(same)
    runner.train()
    assert runner.iter == 4

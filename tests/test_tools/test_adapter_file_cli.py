"""The adapter-file workflow through the command line: train, export, test."""
import importlib.util
import os.path as osp
import re
import subprocess
import sys

import torch
from conftest import REPO_ROOT, tiny_config

from mmseg_naslora.checkpoint.adapter_file import read_adapters


def run_tool(*args, ok=True):
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, log[-4000:]
    return log


def export_main():
    spec = importlib.util.spec_from_file_location(
        'export_tool_reliability', osp.join(REPO_ROOT, 'tools', 'export.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def metrics(log):
    return {k: float(v) for k, v in re.findall(r'\b(Jaccard|Dice|mIoU|mDice): ([\d.]+)', log)}


def test_train_export_and_test_with_adapter_file(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg = tiny_config(str(tmp_path / 'cfg.py'), binary_dataset, checkpoint=sam_path,
                      max_iters=2)
    work = str(tmp_path / 'work')
    log = run_tool('tools/train.py', cfg, '--work-dir', work)
    adapters = osp.join(work, 'adapters.safetensors')
    assert 'AdapterCheckpointHook: wrote' in log and osp.isfile(adapters)
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.getsize(adapters) < osp.getsize(ckpt) / 2

    export_main()([cfg, ckpt, '--mode', 'adapters', '--out', str(tmp_path / 'export')])
    exported = str(tmp_path / 'export' / 'adapters.safetensors')
    (a, _), (b, meta) = read_adapters(adapters), read_adapters(exported)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta['source'] == 'iter_2.pth'

    full = metrics(run_tool('tools/test.py', cfg, ckpt, '--work-dir', work))
    light = run_tool('tools/test.py', cfg, exported, '--work-dir', work)
    assert f'frozen weights from {sam_path}, trained tensors from {exported}' in light
    assert metrics(light) == full and full

"""tools/train.py and tools/test.py on work dirs: no overwrite, empty --resume, DIR argument."""
import hashlib
import os.path as osp
import subprocess
import sys

from conftest import REPO_ROOT, tiny_config


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_work_dir_rules_from_the_command_line(tmp_path, binary_dataset, official_sam):
    cfg = tiny_config(str(tmp_path / 'cfg.py'), binary_dataset, checkpoint=official_sam[1],
                      max_iters=4)
    work = str(tmp_path / 'work')
    run('tools/train.py', cfg, '--work-dir', work)
    before = {name: digest(osp.join(work, name)) for name in ('iter_2.pth', 'iter_4.pth',
                                                              'cfg.py')}

    # A second training without --resume is refused before it writes anything.
    log = run('tools/train.py', cfg, '--work-dir', work, ok=False)
    assert 'already holds checkpoints' in log and '--resume' in log and '--overwrite' in log
    assert {name: digest(osp.join(work, name)) for name in before} == before

    # tools/test.py DIR tests the newest checkpoint of DIR.
    log = run('tools/test.py', cfg, work, '--work-dir', str(tmp_path / 'test'))
    assert f'testing its newest checkpoint {osp.join(work, "iter_4.pth")}' in log
    assert 'Dice:' in log

    # ... and a directory without checkpoints gets a clear message.
    empty = tmp_path / 'empty'
    empty.mkdir()
    log = run('tools/test.py', cfg, str(empty), ok=False)
    assert 'is a directory without checkpoints' in log and 'does not exist' not in log

    # --resume with nothing to resume from stops instead of training from scratch.
    fresh = str(tmp_path / 'fresh')
    log = run('tools/train.py', cfg, '--work-dir', fresh, '--resume', ok=False)
    assert 'nothing to resume from' in log and fresh in log
    assert not osp.exists(osp.join(fresh, 'iter_2.pth'))


def test_test_dir_finds_an_adapter_file_under_any_name(tmp_path):
    import pytest
    import torch
    from safetensors.torch import save_file

    from mmseg_naslora.checkpoint.adapter_file import FORMAT
    from tools.test import resolve_checkpoint
    shared = tmp_path / 'shared'
    shared.mkdir()
    save_file({'w': torch.zeros(1)}, str(shared / 'plain.safetensors'))  # not an adapter file
    (shared / 'damaged.safetensors').write_bytes(b'\x00' * 3)  # skipped, named
    save_file({'w': torch.zeros(1)}, str(shared / 'kvasir_lora.safetensors'),
              metadata={'format': FORMAT})
    assert resolve_checkpoint(str(shared)) == str(shared / 'kvasir_lora.safetensors')
    save_file({'w': torch.zeros(1)}, str(shared / 'isic_lora.safetensors'),
              metadata={'format': FORMAT})
    with pytest.raises(SystemExit, match='several adapter files') as info:
        resolve_checkpoint(str(shared))
    assert 'isic_lora.safetensors, kvasir_lora.safetensors' in str(info.value)
    save_file({'w': torch.zeros(1)}, str(shared / 'adapters.safetensors'),
              metadata={'format': FORMAT})
    assert resolve_checkpoint(str(shared)) == str(shared / 'adapters.safetensors')

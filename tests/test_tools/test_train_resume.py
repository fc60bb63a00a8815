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

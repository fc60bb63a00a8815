"""One run per work dir: resume from the work dir's own newest checkpoint, no overwrite."""
import glob
import hashlib
import os
import os.path as osp
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import REPO_ROOT, tiny_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks
from mmseg_naslora.engine.work_dir import (WorkDirError, find_latest_checkpoint,
                                           lock_work_dir, unlock_work_dir)


def make_cfg(tmp_path, data_root, sam_path, work_dir, max_iters=2, resume=False):
    path = tiny_config(str(tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'), data_root,
                       checkpoint=sam_path, max_iters=max_iters)
    cfg = Config.fromfile(path)
    cfg.work_dir, cfg.resume = str(work_dir), resume
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    add_reliability_hooks(cfg)
    return cfg


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def train(cfg):
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def resumed_iter(runner):
    with open(glob.glob(osp.join(runner.log_dir, '*.log'))[0]) as f:
        log = f.read()
    return int(log.split('resumed epoch: ')[1].split('iter: ')[1].split()[0])


def test_resume_without_last_checkpoint_takes_the_newest(tmp_path, binary_dataset,
                                                         official_sam):
    """iter_2.pth and iter_4.pth, no last_checkpoint (copied from another machine)."""
    work = tmp_path / 'work'
    train(make_cfg(tmp_path, binary_dataset, official_sam[1], work, max_iters=4))
    os.remove(work / 'last_checkpoint')
    before = digest(work / 'iter_4.pth')
    runner = train(make_cfg(tmp_path, binary_dataset, official_sam[1], work, max_iters=6,
                            resume=True))
    assert resumed_iter(runner) == 4
    assert digest(work / 'iter_4.pth') == before  # not retrained and overwritten
    assert osp.isfile(work / 'iter_6.pth')


def test_copied_or_moved_work_dir_resumes_from_its_own_files(tmp_path, binary_dataset,
                                                            official_sam):
    original, copy = tmp_path / 'original', tmp_path / 'copy'
    train(make_cfg(tmp_path, binary_dataset, official_sam[1], original))
    shutil.copytree(original, copy)
    # last_checkpoint in the copy still names original/iter_2.pth; make that file unusable.
    with open(original / 'iter_2.pth', 'wb') as f:
        f.write(b'not the copy')
    assert find_latest_checkpoint(str(copy)) == str(copy / 'iter_2.pth')
    runner = train(make_cfg(tmp_path, binary_dataset, official_sam[1], copy, max_iters=4,
                            resume=True))
    assert resumed_iter(runner) == 2 and osp.isfile(copy / 'iter_4.pth')


def test_resume_with_nothing_to_resume_is_refused(tmp_path, binary_dataset, official_sam):
    work = tmp_path / 'work'
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1], work, resume=True)
    with pytest.raises(WorkDirError, match='nothing to resume from') as info:
        train(cfg)
    assert str(work) in str(info.value) and 'drop --resume' in str(info.value)
    assert not glob.glob(str(work / '*.pth'))


def test_new_run_over_checkpoints_is_refused_unless_overwrite(tmp_path, binary_dataset,
                                                             official_sam):
    work = tmp_path / 'work'
    train(make_cfg(tmp_path, binary_dataset, official_sam[1], work))
    before = digest(work / 'iter_2.pth')
    with pytest.raises(WorkDirError, match='already holds checkpoints') as info:
        train(make_cfg(tmp_path, binary_dataset, official_sam[1], work))
    for hint in ('iter_2.pth', '--resume', '--work-dir', '--overwrite', str(work)):
        assert hint in str(info.value)
    assert digest(work / 'iter_2.pth') == before
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1], work)
    cfg.default_hooks.work_dir_guard.overwrite = True
    train(cfg)  # explicitly allowed


def test_second_run_in_a_locked_work_dir_is_refused(tmp_path, binary_dataset, official_sam):
    work = tmp_path / 'work'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\n'
         'from mmseg_naslora.engine.work_dir import lock_work_dir\n'
         f'lock_work_dir({str(work)!r}); print("locked", flush=True); time.sleep(120)'],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(WorkDirError, match='in use by another training run') as info:
            train(make_cfg(tmp_path, binary_dataset, official_sam[1], work))
        assert f'pid {holder.pid} on host' in str(info.value)
        assert not glob.glob(str(work / '*.pth'))
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock when the holder died: no stale lock.
    lock_work_dir(str(work))
    unlock_work_dir(str(work))


def test_stale_tmp_of_a_killed_save_is_removed(tmp_path, binary_dataset, official_sam):
    work = tmp_path / 'work'
    os.makedirs(work)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = work / f'.iter_2.pth.tmp{dead.pid}'
    stale.write_bytes(b'half a checkpoint')
    live = work / f'.iter_2.pth.tmp{os.getppid()}'  # a live writer's file stays
    live.write_bytes(b'being written')
    train(make_cfg(tmp_path, binary_dataset, official_sam[1], work))
    assert not stale.exists() and live.exists()

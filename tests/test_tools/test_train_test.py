"""tools/train.py, tools/test.py and --resume, as a user runs them."""
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, shared_data_root, tiny_config


def run_tool(*args, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def metric(log: str, name: str) -> float:
    return float(re.findall(rf'\b{name}: ([\d.]+)', log)[-1])


def train_and_test(tmp_path, data_root, checkpoint=None, max_iters=4):
    cfg = tiny_config(str(tmp_path / 'cfg.py'), data_root, checkpoint=checkpoint,
                      max_iters=max_iters)
    work = str(tmp_path / 'work')
    train_log = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert 'Saving checkpoint at 4 iterations' in train_log
    assert 'loss:' in train_log and 'eta:' in train_log
    ckpt = osp.join(work, f'iter_{max_iters}.pth')
    test_log = run_tool('tools/test.py', cfg, ckpt, '--work-dir', work)
    for name in ('Jaccard', 'Dice', 'mIoU', 'mDice'):
        assert 0 <= metric(test_log, name) <= 100
    return cfg, work, test_log


def test_train_test_resume_on_generated_data(tmp_path, binary_dataset, official_sam):
    _, sam_path = official_sam
    cfg, work, _ = train_and_test(tmp_path, binary_dataset, checkpoint=sam_path)
    log = run_tool('tools/train.py', cfg, '--work-dir', work, '--resume',
                   '--cfg-options', 'train_cfg.max_iters=6')
    assert re.search(r'resumed epoch: \d+, iter: 4', log)
    assert 'Iter(train) [6/6]' in log
    assert osp.isfile(osp.join(work, 'iter_6.pth'))


def test_data_root_flag_and_amp_refusal(tmp_path, binary_dataset):
    cfg = tiny_config(str(tmp_path / 'cfg.py'), '/nonexistent')
    proc = subprocess.run([sys.executable, 'tools/train.py', cfg, '--amp', '--data-root',
                           binary_dataset, '--work-dir', str(tmp_path / 'w')],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert '--amp needs a CUDA device' in proc.stderr
    assert not glob.glob(str(tmp_path / 'w' / '*.pth'))


@pytest.mark.slow
def test_train_test_on_real_kvasir(tmp_path):
    root = shared_data_root('kvasir_seg')
    if not osp.isdir(root):
        pytest.skip(f'Kvasir-SEG not found at {root} (set NASLORA_DATA)')
    cfg = tiny_config(str(tmp_path / 'cfg.py'), '/nonexistent', val_indices=8)
    work = str(tmp_path / 'work')
    run_tool('tools/train.py', cfg, '--data-root', root, '--work-dir', work)
    log = run_tool('tools/test.py', cfg, osp.join(work, 'iter_4.pth'), '--data-root', root,
                   '--work-dir', work)
    assert 'Iter(test) [8/8]' in log
    assert 0 <= metric(log, 'Dice') <= 100


@pytest.mark.slow
@pytest.mark.parametrize('mode,losses', [('set', ('loss_cls', 'loss_mask', 'loss_dice')),
                                         ('perclass', ('loss_ce', 'loss_dice'))])
def test_multiclass_heads_on_real_camvid(tmp_path, mode, losses):
    root = shared_data_root('camvid')
    if not osp.isdir(root):
        pytest.skip(f'CamVid not found at {root} (set NASLORA_DATA)')
    cfg = tiny_config(
        str(tmp_path / 'cfg.py'), root,
        base=f'configs/sam_multiclass/lora_sam-vit-b-{mode}_1xb4-20k_camvid-352x480.py',
        max_iters=4, val_indices=4)
    work = str(tmp_path / 'work')
    log = run_tool('tools/train.py', cfg, '--data-root', root, '--work-dir', work)
    assert all(f'decode.{name}' in log for name in losses)
    log = run_tool('tools/test.py', cfg, osp.join(work, 'iter_4.pth'), '--data-root', root,
                   '--work-dir', work)
    assert 'bicyclist' in log  # the per-class table covers all 11 classes
    assert 0 <= metric(log, 'mIoU') <= 100


def _teardown_abort(returncode: int, log: str) -> bool:
    """Whether a rank died of SIGABRT (torchrun reports it; a bare rank exits -6/134)."""
    return returncode in (-6, 134) or 'SIGABRT' in log or \
        'terminate called without an active exception' in log


@pytest.mark.slow
def test_dist_train_and_test_scripts_with_two_cpu_processes(tmp_path, binary_dataset):
    import os
    import socket
    cfg = tiny_config(str(tmp_path / 'cfg.py'), binary_dataset, max_iters=4)
    work = str(tmp_path / 'work')
    with socket.socket() as sock:  # a free port: a fixed one can still be taken or in TIME_WAIT
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(port), PYTHON=sys.executable)
    ckpt = osp.join(work, 'iter_4.pth')
    # Each command with what shows that its work was done (final checkpoint, metrics).
    for cmd, done in ((['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work],
                       lambda log: 'Saving checkpoint at 4 iterations' in log
                       and osp.isfile(ckpt)),
                      (['bash', 'tools/dist_test.sh', cfg, ckpt, '2', '--work-dir', work],
                       lambda log: re.search(r'\bDice: [\d.]+', log) is not None)):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0 and done(log) and _teardown_abort(proc.returncode, log):
            # Issue 15: once seen in CI after a good run. Still a failure, but named as
            # what it is (see mmseg_naslora.utils.cli.DistributedSession).
            pytest.fail(f'{cmd[1]} finished its work (final checkpoint/metrics written) but a '
                        'rank aborted at teardown (SIGABRT, "terminate called without an '
                        'active exception"): a process-group or worker thread outlived main.\n'
                        + log[-3000:], pytrace=False)
        assert proc.returncode == 0, log[-6000:]
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    # Sharded evaluation over 2 ranks reports what one process reports on the same data.
    single = run_tool('tools/test.py', cfg, osp.join(work, 'iter_4.pth'), '--work-dir', work)
    for name in ('Dice', 'Jaccard', 'mIoU'):
        assert metric(log, name) == pytest.approx(metric(single, name), abs=0.02)

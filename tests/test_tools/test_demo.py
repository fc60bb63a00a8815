"""tools/demo.sh, the README's main job (`make demo`)."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, shared_data_root

DEMO = osp.join(REPO_ROOT, 'tools', 'demo.sh')


def demo(tmp_path, data_root, iters, timeout=60):
    env = dict(os.environ, ITERS=str(iters), WORK_DIR=str(tmp_path / 'demo'),
               PYTHON=sys.executable)
    return subprocess.run(['bash', DEMO, str(data_root)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_data_says_how_to_get_it(tmp_path):
    proc = demo(tmp_path, tmp_path / 'nowhere', 150)
    assert proc.returncode == 1
    assert f'no Kvasir-SEG in mmseg layout at {tmp_path / "nowhere"}' in proc.stderr
    assert 'https://datasets.simula.no/kvasir-seg/' in proc.stderr
    assert 'tools/dataset_converters/kvasir.py' in proc.stderr
    assert not (tmp_path / 'demo').exists()


@pytest.mark.parametrize('iters', ['2', 'ten'])
def test_bad_iters_refused(tmp_path, iters):
    for sub in ('img_dir/train', 'ann_dir/val'):
        (tmp_path / 'data' / sub).mkdir(parents=True)
    proc = demo(tmp_path, tmp_path / 'data', iters)
    assert proc.returncode == 1
    assert f"ITERS must be an integer >= 3 (T_B is a third of it), got '{iters}'" in proc.stderr
    assert not (tmp_path / 'demo').exists()


@pytest.mark.slow
def test_short_demo_on_real_kvasir(tmp_path):
    root = shared_data_root('kvasir_seg')
    if not osp.isdir(root):
        pytest.skip(f'Kvasir-SEG not found at {root} (set NASLORA_DATA)')
    # 6 iterations: 2 weight-only, then 4 with α steps; everything else as in `make demo`.
    proc = demo(tmp_path, root, 6, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    work = tmp_path / 'demo'
    assert 'NASStageHook: weights only for 2 iters' in out
    assert 'alpha.lr: 7.5000e-01' in out  # the α lr rule: 3 / (6 - 2) search steps
    assert 'Iter(train) [6/6]' in out and 'eta:' in out
    summary = out[out.index('Kvasir-SEG val, LiteMedSAM, 6 iterations'):]
    scores = dict(re.findall(r'^  (naslora|decoder-only) +(Jaccard: [\d.]+, Dice: [\d.]+)',
                             summary, re.M))
    assert set(scores) == {'naslora', 'decoder-only'}, summary
    val_images = len(glob.glob(osp.join(root, 'img_dir', 'val', '*')))
    for name in scores:
        assert len(glob.glob(str(work / name / 'overlays' / '**' / '*.png'),
                             recursive=True)) == val_images
        assert (work / name / 'iter_6.pth').is_file()
    for plot in ('alpha_heatmap.png', 'alpha_trajectory.png'):
        assert (work / 'naslora' / plot).stat().st_size > 0

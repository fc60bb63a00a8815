"""tools/analysis_tools/seed_grid.py: a methods x seeds grid, its table and its resumability."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, make_binary_dataset, tiny_config

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis_tools'))
import seed_grid  # noqa: E402

NAS_BASE = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'


def arch(ops):
    prims = ['a', 'b', 'c']
    return dict(primitives=prims, layers=[
        dict(label=f'blocks.{i}', argmax=op, weights=[0.5 if p == op else 0.25 for p in prims])
        for i, op in enumerate(ops)])


def test_report_mean_std_and_argmax_agreement():
    cells = [dict(seed=s, wall_s=60. * (s + 1), metrics=dict(Dice=d, Jaccard=j), arch=arch(ops))
             for s, d, j, ops in [(0, 80., 66., 'aab'), (1, 78., 64., 'abb'), (2, 83., 70., 'acb')]]
    table = seed_grid.report({'searched': cells}, ['Dice', 'Jaccard'])
    dice = np.array([80., 78., 83.])
    assert f'| searched | 3 | {dice.mean():.2f} ± {dice.std(ddof=1):.2f} |' in table
    assert '| 2.00 ± 1.00 |' in table  # wall time in minutes
    assert '| blocks.1 | a (0.500) | b (0.500) | c (0.500) |' in table
    # blocks.0 (a, a, a) and blocks.2 (b, b, b) agree; blocks.1 does not.
    assert seed_grid.agreement([c['arch'] for c in cells])['labels'] == ['blocks.0', 'blocks.2']
    assert '2 of 3 layers agree on their argmax across the 3 seeds (chance: 1 in 9' in table


def test_last_val_metrics_reads_the_newest_run(tmp_path):
    for stamp, dice in (('20260101_000000', 10.), ('20260102_000000', 20.)):
        folder = tmp_path / stamp / 'vis_data'
        folder.mkdir(parents=True)
        lines = [dict(lr=1e-3, loss=0.5, iter=1, step=1), dict(Dice=dice - 1, step=1),
                 dict(lr=1e-3, loss=0.4, iter=2, step=2), dict(Dice=dice, Jaccard=dice / 2, step=2)]
        (folder / 'scalars.json').write_text('\n'.join(json.dumps(x) for x in lines))
    assert seed_grid.last_val_metrics(str(tmp_path)) == dict(Dice=20., Jaccard=10.)
    with pytest.raises(RuntimeError, match='no validation metrics'):
        seed_grid.last_val_metrics(str(tmp_path / 'missing'))


def test_bad_arguments_are_refused(tmp_path):
    cfg = str(tmp_path / 'cfg.py')
    open(cfg, 'w').close()
    with pytest.raises(SystemExit):
        seed_grid.parse_args(['--work-dir', 'w', '--run', 'a'])
    with pytest.raises(SystemExit):
        seed_grid.parse_args(['--work-dir', 'w', '--run', 'a', 'missing.py'])
    with pytest.raises(SystemExit):
        seed_grid.parse_args(['--work-dir', 'w', '--run', 'a', cfg, 'notakeyvalue'])
    with pytest.raises(SystemExit):
        seed_grid.parse_args(['--work-dir', 'w', '--run', 'a', cfg, '--run', 'a', cfg])
    args = seed_grid.parse_args(['--work-dir', 'w', '--run', 'a', cfg, 'x.y=1',
                                 '--common', 'train_cfg.max_iters=2'])
    command = seed_grid.train_command(args, args.run[0], 3, 'w/a/seed3')
    assert command[-3:] == ['randomness.seed=3', 'train_cfg.max_iters=2', 'x.y=1']


@pytest.mark.slow
def test_tiny_grid_trains_reports_and_resumes(tmp_path):
    data = make_binary_dataset(str(tmp_path / 'data'), splits=(('train', 4), ('val', 2)))
    cfg = tiny_config(str(tmp_path / 'nas.py'), data, base=NAS_BASE, max_iters=2, extra='\n'.join([
        "custom_hooks = [dict(type='NASStageHook', warmup=1, by_epoch=False), "
        "dict(type='NASAlphaLoggerHook', interval=1)]",
        'default_hooks = dict(checkpoint=dict(interval=2, save_best=None))',
        'optim_wrapper = dict(weights=dict(optimizer=dict(lr=1e-3)), '
        'alpha=dict(optimizer=dict(lr=5e-2)))',
        "val_evaluator = dict(type='ForegroundIoUMetric')"]))
    work = tmp_path / 'grid'
    argv = [sys.executable, osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'seed_grid.py'),
            '--work-dir', str(work), '--seeds', '0', '1', '--run', 'searched', cfg,
            '--run', 'uniform', cfg, 'custom_hooks.0.warmup=2']
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((work / 'grid.json').read_text())
    assert sorted(results) == ['searched', 'uniform']
    for name, cells in results.items():
        assert [c['seed'] for c in cells] == [0, 1]
        for cell in cells:
            assert 0 <= cell['metrics']['Dice'] <= 100 and cell['wall_s'] > 0
            assert len(cell['arch']['layers']) == 2  # the tiny SAM's two adapted blocks
    assert '| searched | 2 |' in proc.stdout and '| uniform | 2 |' in proc.stdout
    assert (work / 'grid.md').read_text().strip() in proc.stdout
    # A second call trains nothing: every cell is done.
    stamp = osp.getmtime(work / 'searched' / 'seed0' / 'grid_result.json')
    again = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                           timeout=300)
    assert again.returncode == 0 and '[seed_grid]' not in again.stdout
    assert osp.getmtime(work / 'searched' / 'seed0' / 'grid_result.json') == stamp

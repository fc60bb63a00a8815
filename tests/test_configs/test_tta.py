"""``tools/test.py --tta`` on every shipped config, and its refusals on configs that cannot."""
import glob
import os.path as osp

import pytest
from conftest import REPO_ROOT
from mmengine.config import Config

from mmseg_naslora.utils.cli import apply_tta

CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                                      recursive=True) if '_base_' not in p)
DATASET_BASES = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '_base_', 'datasets', '*.py')))


@pytest.mark.parametrize('path', DATASET_BASES, ids=osp.basename)
def test_every_dataset_base_has_a_tta_pipeline(path):
    cfg = Config.fromfile(path)
    flips = [t for options in cfg.tta_pipeline[-1].transforms for t in options
             if t.type == 'RandomFlip']
    assert flips[0].prob == 0. and all(t.prob == 1. for t in flips[1:])  # the plain view first
    # Every transform of the test pipeline is in the TTA pipeline (same scale, same loading).
    flat = cfg.tta_pipeline[:-1] + [t for options in cfg.tta_pipeline[-1].transforms
                                    for t in options]
    assert all(t in flat for t in cfg.test_pipeline)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO_ROOT))
def test_every_shipped_config_runs_with_tta(path):
    # Issue 15: 84 shipped configs failed `--tta` with AttributeError: tta_pipeline, and
    # 28 had a tta_pipeline at another scale than their test pipeline.
    cfg = Config.fromfile(path)
    model_type = cfg.model.type
    apply_tta(cfg, path)
    # Score metrics included: ProbTTAModel merges the scores (and replaces mmseg's SegTTAModel).
    assert cfg.model.type == 'ProbTTAModel' and cfg.model.module.type == model_type
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'


def test_tta_refusals():
    cfg = Config(dict(model=dict(type='EncoderDecoder'),
                      test_dataloader=dict(dataset=dict(pipeline=[dict(type='Resize')]))))
    with pytest.raises(SystemExit, match='my.py defines no tta_pipeline.*kvasir_seg.py'):
        apply_tta(cfg, 'my.py')
    cfg.tta_pipeline = [dict(type='TestTimeAug', transforms=[[dict(type='RandomFlip')]])]
    with pytest.raises(SystemExit, match="has {'type': 'Resize'} that the tta_pipeline lacks"):
        apply_tta(cfg, 'my.py')
    cfg.tta_pipeline[0].transforms.append([dict(type='Resize')])
    cfg.test_evaluator = [dict(type='ForegroundIoUMetric'), dict(type='AUCMetric')]
    cfg.tta_model = dict(type='MyTTAModel')
    with pytest.raises(SystemExit, match='AUCMetric .* MyTTAModel does not merge'):
        apply_tta(cfg, 'my.py')
    cfg.tta_model = dict(type='SegTTAModel')
    apply_tta(cfg, 'my.py')  # mmseg's: replaced, and the scores are then merged
    assert cfg.model == dict(type='ProbTTAModel', module=dict(type='EncoderDecoder'))


TINY_TTA = '''
tta_pipeline = [
    test_pipeline[0],
    dict(type='TestTimeAug', transforms=(
        [[t] for t in test_pipeline[1:] if t['type'] == 'Resize']
        + [[dict(type='RandomFlip', prob=0.),
            dict(type='RandomFlip', prob=1., direction='horizontal'),
            dict(type='RandomFlip', prob=1., direction='vertical')]]
        + [[t] for t in test_pipeline[1:] if t['type'] != 'Resize']))]
'''


def test_tta_runs_end_to_end_on_a_tiny_model(tmp_path, binary_dataset, official_sam):
    import subprocess
    import sys

    from conftest import tiny_config
    _, sam_path = official_sam
    cfg = tiny_config(str(tmp_path / 'cfg.py'), binary_dataset, checkpoint=sam_path,
                      max_iters=2, extra=TINY_TTA)
    work = str(tmp_path / 'work')

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run('tools/train.py', cfg, '--work-dir', work)
    log = run('tools/test.py', cfg, osp.join(work, 'iter_2.pth'), '--work-dir', work, '--tta')
    assert 'SegTTAModel' in log or 'TestTimeAug' in log
    assert 'Dice' in log and 'Jaccard' in log

"""SAM2LoRA end to end: tools/train.py and tools/test.py on the real DRIVE data."""
import os.path as osp

import pytest
from conftest import shared_data_root
from test_train_test import metric, run_tool

CONFIG = 'configs/sam2lora/sam2lora_sam2-hiera-tiny-random_1xb2-200_drive-256x256.py'


@pytest.mark.slow
def test_tiny_sam2lora_trains_and_reports_dice_and_auc_on_drive(tmp_path):
    root = shared_data_root('drive')
    if not osp.isdir(root):
        pytest.skip(f'DRIVE not found at {root} (set NASLORA_DATA)')
    pytest.importorskip('sam2', reason='SAM2 is installed from requirements/sam2.txt')
    work = str(tmp_path / 'work')
    short = ['train_cfg.max_iters=4', 'train_cfg.val_interval=4',
             'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=1',
             'val_dataloader.dataset.indices=4']
    log = run_tool('tools/train.py', CONFIG, '--data-root', root, '--work-dir', work,
                   '--cfg-options', *short)
    # The composite loss: BCE + SoftDice + FocalTversky.
    for name in ('decode.loss_bce', 'decode.loss_sdice', 'decode.loss_ftversky'):
        assert f'{name}: ' in log, name
    assert 'Iter(val) [4/4]' in log and 'AUC: ' in log
    val_auc = metric(log, 'AUC')
    log = run_tool('tools/test.py', CONFIG, osp.join(work, 'iter_4.pth'), '--data-root', root,
                   '--work-dir', work, '--cfg-options', 'test_dataloader.dataset.indices=4')
    assert 'Iter(test) [4/4]' in log
    assert 0 <= metric(log, 'Dice') <= 100
    # The saved LoRA weights (encoder and decoder) give back the validation result.
    assert metric(log, 'AUC') == val_auc
    assert 0 <= val_auc <= 100

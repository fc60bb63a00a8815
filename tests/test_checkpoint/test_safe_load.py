"""Training checkpoints load with weights_only=True and mmengine's types; nothing else runs."""
import datetime
import os
import os.path as osp
import pickle
import uuid

import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

import mmseg_naslora  # noqa: F401
from mmseg_naslora.checkpoint.safe_load import TRUST_ENV
from mmseg_naslora.engine.reliability_defaults import add_reliability_hooks


class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


class GetattrEscape:
    """``getattr`` on an allowed class, the first step of walking to ``__globals__``."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def make_cfg(tmp_path, data_root, sam_path):
    cfg = Config.fromfile(tiny_config(str(tmp_path / 'cfg.py'), data_root,
                                      checkpoint=sam_path, max_iters=2))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'exp_{uuid.uuid4().hex}'
    add_reliability_hooks(cfg)
    return cfg


@pytest.fixture
def no_trust(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def test_malicious_checkpoint_does_not_run(tmp_path, binary_dataset, official_sam, no_trust):
    marker = str(tmp_path / 'pwned')
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(state_dict={}, meta=dict(x=Payload(marker))), path)
    with pytest.raises(pickle.UnpicklingError) as info:
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert not osp.exists(marker)
    msg = str(info.value)
    for hint in (path, 'arbitrary code', f'{TRUST_ENV}=1', '--trust-checkpoint',
                 'adapters.safetensors'):
        assert hint in msg, (hint, msg)
    # The route tools/test.py takes: load_from + Runner.test().
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    cfg.load_from = path
    with pytest.raises(pickle.UnpicklingError, match='refusing to load'):
        Runner.from_cfg(cfg).test()
    assert not osp.exists(marker)


def test_getattr_outside_history_buffer_statistics_is_refused(tmp_path, no_trust):
    path = str(tmp_path / 'escape.pth')
    torch.save(dict(meta=GetattrEscape()), path)
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer.__init__|__init__'):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')


def test_training_checkpoint_loads_weights_only(tmp_path, binary_dataset, official_sam,
                                                no_trust, monkeypatch):
    cfg = make_cfg(tmp_path, binary_dataset, official_sam[1])
    Runner.from_cfg(cfg).train()
    real_load = torch.load
    modes = []

    def spy(*args, **kwargs):
        modes.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, 'load', spy)
    ckpt = CheckpointLoader.load_checkpoint(osp.join(cfg.work_dir, 'iter_2.pth'),
                                            map_location='cpu')
    assert modes == [True]
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.mean() > 0


def test_trusted_file_opt_in(tmp_path, monkeypatch):
    path = str(tmp_path / 'trusted.pth')
    torch.save(dict(meta=dict(when=datetime.datetime(2024, 1, 1))), path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(pickle.UnpicklingError, match='datetime'):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    monkeypatch.setenv(TRUST_ENV, '1')
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert ckpt['meta']['when'].year == 2024
    assert os.environ[TRUST_ENV] == '1'

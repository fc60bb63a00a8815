"""mmseg_naslora.utils.cli.DistributedSession: the tools' teardown, on success and on error."""
import gc
import socket
import weakref

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from torch.utils.data import DataLoader

from mmseg_naslora.utils.cli import DistributedSession, shutdown_dataloader_workers


def init_single_process_group():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                            world_size=1)


class FakeLoop:
    def __init__(self, loader):
        self.dataloader = loader


class FakeRunner:
    """What the session touches: a model and loops holding dataloaders (and a cycle)."""

    def __init__(self, loader):
        self.model = torch.nn.Linear(2, 2)
        self._train_loop = FakeLoop(loader)
        self._train_loop.runner = self  # loops reference the runner, as mmengine's do
        self._val_loop = dict(type='ValLoop')  # never built: left alone


@pytest.fixture
def persistent_loader():
    loader = DataLoader(list(range(4)), batch_size=2, num_workers=1, persistent_workers=True)
    list(loader)  # starts the worker, which persistent_workers keeps alive
    assert loader._iterator is not None and loader._iterator._workers[0].is_alive()
    return loader


@pytest.mark.parametrize('fail', [False, True], ids=['success', 'error'])
def test_session_releases_everything_and_destroys_the_group(persistent_loader, fail):
    init_single_process_group()
    worker = persistent_loader._iterator._workers[0]
    session = DistributedSession(Config(), 'none')
    runner = FakeRunner(persistent_loader)
    model_ref = weakref.ref(runner.model)
    if fail:
        with pytest.raises(RuntimeError, match='boom'), session:
            session.runner, runner = runner, None
            raise RuntimeError('boom')  # the run's own error is what surfaces
    else:
        with session:
            session.runner, runner = runner, None
    assert not dist.is_initialized()  # destroyed on both paths (it used to leak on error)
    worker.join(timeout=10)
    assert not worker.is_alive() and persistent_loader._iterator is None
    gc.collect()
    assert model_ref() is None and session.runner is None


def test_shutdown_ignores_runners_without_built_loops():
    class Bare:
        _train_loop = dict(type='IterBasedTrainLoop')
    shutdown_dataloader_workers(Bare())
    with DistributedSession(Config(), 'none') as session:  # no group: nothing to destroy
        session.runner = Bare()
    assert session.runner is None

"""The one atomic-write helper: full disk reported clearly, previous file intact, no temp left."""
import errno
import glob
import io
import os.path as osp

import pytest
import torch

from mmseg_naslora.checkpoint import atomic_io
from mmseg_naslora.checkpoint.atomic_io import atomic_torch_save, atomic_write_bytes


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes (what /dev/full does at 0)."""
    room = 64

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return super().write(data)


def test_full_disk_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    path = str(tmp_path / 'iter_4.pth')
    atomic_torch_save({'w': torch.ones(3)}, path)
    monkeypatch.setattr(atomic_io, 'open', lambda p, mode: FullDisk(p, mode), raising=False)
    with pytest.raises(OSError) as info:
        atomic_torch_save({'w': torch.zeros(10000)}, path)
    # torch alone reports "unexpected pos 64 vs 0" with ENOSPC buried in the context.
    assert info.value.errno == errno.ENOSPC
    assert f'no space left on device while writing {path}' in str(info.value)
    assert 'the previous file is intact' in str(info.value)
    assert 'unexpected pos' not in str(info.value)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)['w'], torch.ones(3))
    assert not glob.glob(osp.join(str(tmp_path), '.*tmp*'))


def test_write_removes_stale_tmp_of_its_target(tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.exported.pth.tmp{dead.pid}'
    stale.write_bytes(b'x')
    other = tmp_path / f'.other.pth.tmp{dead.pid}'
    other.write_bytes(b'x')
    atomic_write_bytes(str(tmp_path / 'exported.pth'), b'data')
    assert not stale.exists() and other.exists()
    assert (tmp_path / 'exported.pth').read_bytes() == b'data'


def test_adapter_file_uses_the_shared_helpers():
    from mmseg_naslora.checkpoint import adapter_file
    assert adapter_file.atomic_write_bytes is atomic_io.atomic_write_bytes
    assert adapter_file.sha256_file is atomic_io.sha256_file


def test_the_atomic_backend_of_the_checkpoint_hook(tmp_path, monkeypatch):
    """``backend_args=dict(backend='atomic_local')`` (every schedule's CheckpointHook)."""
    from mmengine.fileio import LocalBackend, get_file_backend

    from mmseg_naslora.checkpoint.mmengine_io import ATOMIC_BACKEND_ARGS, AtomicLocalBackend
    path = str(tmp_path / 'iter_4.pth')
    backend = get_file_backend(path, backend_args=ATOMIC_BACKEND_ARGS)
    assert isinstance(backend, AtomicLocalBackend) and isinstance(backend, LocalBackend)
    backend.put(b'good checkpoint', path)
    backend.put_text('step 4', str(tmp_path / 'notes.txt'))
    monkeypatch.setattr(atomic_io, 'open', lambda p, mode: FullDisk(p, mode), raising=False)
    with pytest.raises(OSError, match=f'no space left on device while writing {path}'):
        backend.put(b'x' * 1000, path)
    monkeypatch.undo()
    assert open(path, 'rb').read() == b'good checkpoint'
    assert (tmp_path / 'notes.txt').read_text() == 'step 4'
    assert not glob.glob(osp.join(str(tmp_path), '.*tmp*'))
    # A remote path is refused with the fix, not written to a local folder named 's3:'.
    with pytest.raises(ValueError, match='backend_args=None'):
        backend.put(b'x', 's3://bucket/run/iter_4.pth')

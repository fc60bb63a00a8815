"""Crash-safe checkpoint files for mmengine's runner.

mmengine 0.10.7 writes a checkpoint by opening its final path and writing the
pickled bytes, so a crash, a full disk or a kill during the write leaves a
truncated ``iter_N.pth``/``best_*.pth`` that ``--resume`` then fails on. Here
the name ``save_checkpoint`` that :meth:`mmengine.runner.Runner.save_checkpoint`
calls (and only that name, in ``mmengine.runner.runner``) is replaced by a
version that writes local files with
:func:`mmseg_naslora.engine.atomic_io.atomic_torch_save` (temp file, fsync,
``os.replace``; a full disk is reported naming the file). Other storage
backends (``s3://``, ``pavi://``...) keep mmengine's code.
"""
from typing import Optional

import mmengine.runner.runner as _runner_module
from mmengine.fileio import LocalBackend, get_file_backend

from .atomic_io import atomic_torch_save

_mmengine_save_checkpoint = _runner_module.save_checkpoint


def atomic_save_checkpoint(checkpoint: dict, filename: str,
                           file_client_args: Optional[dict] = None,
                           backend_args: Optional[dict] = None) -> None:
    """``mmengine.runner.checkpoint.save_checkpoint``, atomic for local files."""
    if file_client_args is not None or not isinstance(
            get_file_backend(filename, backend_args=backend_args), LocalBackend):
        return _mmengine_save_checkpoint(checkpoint, filename,
                                         file_client_args=file_client_args,
                                         backend_args=backend_args)
    atomic_torch_save(checkpoint, filename)


_runner_module.save_checkpoint = atomic_save_checkpoint

"""What the package registers with mmengine, and why: the one place.

Importing :mod:`mmseg_naslora` registers two things with mmengine 0.10.7.
Nothing else of mmengine, mmseg or torch is replaced.

1. **The local-file checkpoint loader** (``CheckpointLoader`` scheme ``''``),
   the one override, which the mmengine/torch combination needs: mmengine's
   own calls ``torch.load`` without ``weights_only``, so torch >= 2.6
   refuses mmengine's training checkpoints (message hub, numpy state), and
   an older torch runs any pickle code in them. :func:`load_from_local`
   serves ``load_from``, ``--resume``, ``tools/test.py CKPT``,
   ``init_cfg=dict(type='Pretrained')`` (without ``prefix``) and mmseg's ``init_model``:

   - ``.pth`` files load with :func:`~.safe_load.load_pth`
     (``weights_only=True`` and the allow-list of the types mmengine writes);
   - an adapter file becomes the state dict of
     :func:`~.adapter_file.adapter_file_state_dict`, which the model itself
     completes from its base checkpoints while it loads, so a stock mmseg
     runner, ``tools/test.py`` and ``model.load_state_dict`` load it alike;
   - any other ``.safetensors`` file gives ``dict(state_dict=...)``.
     Neither safetensors route unpickles anything.

2. **A storage backend** ``'atomic_local'`` (added beside mmengine's, not
   replacing it). mmengine's local backend writes the final path directly,
   so a crash, a kill or a full disk during a save leaves a truncated
   ``iter_N.pth`` that ``--resume`` fails on. The schedules'
   ``CheckpointHook(backend_args=dict(backend='atomic_local'))`` write every
   ``iter_N.pth``/``epoch_N.pth`` and ``best_*.pth`` through
   :func:`~.atomic_io.atomic_write` instead (the tools set it on a config
   that names no backend). mmengine writes the ``last_checkpoint`` pointer
   with a plain ``open``; the package's resume does not trust it and scans
   the work dir (:mod:`mmseg_naslora.engine.work_dir`).
"""
import os.path as osp
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

from .adapter_file import FORMAT, adapter_file_state_dict, read_safetensors_metadata
from .atomic_io import atomic_write_bytes
from .safe_load import load_pth

#: ``backend_args`` of a ``CheckpointHook`` that saves atomically.
ATOMIC_BACKEND_ARGS = dict(backend='atomic_local')


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None) -> dict:
    """mmengine's ``load_from_local``, safe, and aware of adapter files.

    Returns:
        dict: ``dict(state_dict=..., meta=...)`` for an adapter file (``meta``
        holds ``adapter_file`` and its header as ``adapter_metadata``),
        ``dict(state_dict=...)`` for other safetensors files, and the
        unpickled object of a ``.pth``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if not filename.endswith('.safetensors'):
        return load_pth(filename, map_location=map_location)
    metadata = read_safetensors_metadata(filename)
    if metadata.get('format') != FORMAT:
        from safetensors.torch import load_file
        return dict(state_dict=load_file(filename))
    return dict(state_dict=adapter_file_state_dict(filename),
                meta=dict(adapter_file=filename, adapter_metadata=metadata))


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend whose writes replace files atomically."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(_local(filepath), obj)

    def put_text(self, obj: str, filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        atomic_write_bytes(_local(filepath), obj.encode(encoding))


def _local(filepath: Union[str, Path]) -> str:
    """``filepath`` as a string; a URI (``s3://...``) is refused with the fix."""
    filepath = str(filepath)
    if '://' in filepath:
        raise ValueError(
            f"backend 'atomic_local' writes local files only, not {filepath}; for a remote "
            'out_dir set default_hooks.checkpoint.backend_args=None (or the args of your '
            'storage backend).')
    return filepath

"""mmengine 0.10.7 checkpoint loading on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, but mmengine's
own training checkpoints pickle the message hub, optimizer and numpy state,
so ``--resume`` and ``tools/test.py CKPT`` fail. The fix is scoped to
mmengine's local-file loader: it alone keeps full unpickling, and only for
checkpoints mmengine wrote. ``.safetensors`` files (adapter files written by
:mod:`mmseg_naslora.models.utils.adapter_io`, or plain weights) are routed to
the safetensors reader, which never unpickles. Pretrained SAM weights go
through :func:`mmseg_naslora.models.utils.checkpoint.load_state_dict_file`,
which never unpickles code either. Load ``.pth`` training checkpoints only
from sources you trust.

Importing this module also makes the runner's checkpoint writes atomic
(:mod:`mmseg_naslora.engine.atomic_checkpoint`).
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from . import atomic_checkpoint  # noqa: F401  (crash-safe checkpoint writes)


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None):
    """mmengine's ``load_from_local`` with explicit ``weights_only=False``.

    ``.safetensors`` files are read without pickle: an adapter file becomes
    ``dict(state_dict=..., meta=dict(adapter_file=PATH, adapter_metadata=...))``
    (the :class:`AdapterCheckpointHook` then loads it onto the base model),
    any other safetensors file ``dict(state_dict=...)``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if filename.endswith('.safetensors'):
        from safetensors import safe_open

        from ..models.utils.adapter_io import FORMAT, read_adapters
        with safe_open(filename, framework='pt') as f:
            is_adapter_file = (f.metadata() or {}).get('format') == FORMAT
        if not is_adapter_file:
            from safetensors.torch import load_file
            return dict(state_dict=load_file(filename))
        tensors, metadata = read_adapters(filename)
        return dict(state_dict=tensors,
                    meta=dict(adapter_file=filename, adapter_metadata=metadata))
    return torch.load(filename, map_location=map_location, weights_only=False)

"""mmengine 0.10.7 checkpoint loading on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, but mmengine's
own training checkpoints pickle the message hub, optimizer and numpy state,
so ``--resume`` and ``tools/test.py CKPT`` fail. The fix is scoped to
mmengine's local-file loader: it alone keeps full unpickling, and only for
checkpoints mmengine wrote. Pretrained SAM weights go through
:func:`mmseg_naslora.models.utils.checkpoint.load_state_dict_file`, which
never unpickles code. Load training checkpoints only from sources you trust.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None):
    """mmengine's ``load_from_local`` with explicit ``weights_only=False``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)

"""Safe loading of mmengine checkpoints: the package's only patch of mmengine's load.

What is patched and why (the single place; see also docs/troubleshooting.md,
"Safe loading"):

- mmengine 0.10.7's local-file loader (``CheckpointLoader`` scheme ``''``,
  used by ``load_from``, ``--resume``, ``tools/test.py CKPT`` and
  ``init_cfg=dict(type='Pretrained')``) calls ``torch.load`` without
  ``weights_only``. torch >= 2.6 then defaults to ``weights_only=True`` and
  refuses mmengine's own training checkpoints (message hub, numpy state),
  while older torch runs any pickle code. :func:`load_from_local` replaces
  it: ``.pth`` files load with ``weights_only=True`` plus
  :data:`MMENGINE_SAFE_GLOBALS`, exactly the types mmengine writes into
  ``meta``/``message_hub``/``optimizer``/``param_schedulers`` (found by
  saving real checkpoints and listing their globals with
  ``torch.serialization.get_unsafe_globals_in_checkpoint``). The allow-list
  is scoped to this call (``torch.serialization.safe_globals``), not added
  process-wide. Anything else is refused with a message that says how to
  opt in for a trusted file (:data:`TRUST_ENV`, or ``--trust-checkpoint`` of
  the tools).
- ``.safetensors`` files are routed to the safetensors reader, which never
  unpickles: an adapter file (:mod:`mmseg_naslora.models.utils.adapter_io`)
  or plain weights. An adapter file read by a runner's ``load_checkpoint``
  (``load_from``) is loaded here onto the runner's model, base SAM weights
  first, so a stock mmseg runner (``custom_imports``, no package hooks)
  evaluates the same model as ``tools/test.py``.

Pretrained SAM weights go through
:func:`mmseg_naslora.models.utils.checkpoint.load_state_dict_file`
(``weights_only=True``, no allow-list needed: plain tensors).

Importing this module also makes the runner's checkpoint writes atomic
(:mod:`mmseg_naslora.engine.atomic_checkpoint`), the other patch.
"""
import os
import os.path as osp
import pickle
import sys
from typing import Any, List

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from . import atomic_checkpoint  # noqa: F401  (crash-safe checkpoint writes)

#: Set to 1 to load ``.pth`` checkpoints with full pickle (trusted files only).
TRUST_ENV = 'MMSEG_NASLORA_TRUST_CHECKPOINTS'

# The statistics ``mmengine.logging.HistoryBuffer`` pickles by reference, as
# ``getattr(HistoryBuffer, 'min')`` etc. (see HistoryBuffer.__getstate__).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'mean', 'current')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """The ``builtins.getattr`` a checkpoint may call: HistoryBuffer statistics only.

    A general ``getattr`` would let a pickle walk from any allowed object to
    ``__globals__`` and run code, so only these lookups are answered.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not in the allow-list of mmengine checkpoint '
        f'types (only HistoryBuffer.{"/".join(_HISTORY_BUFFER_STATISTICS)})')


def mmengine_safe_globals() -> List[Any]:
    """The allow-list: every non-tensor type mmengine 0.10 puts into a checkpoint.

    ``message_hub`` holds ``HistoryBuffer`` objects (numpy arrays, numpy
    scalars, bound statistics methods) and numpy scalars in its runtime
    info; ``meta``, ``optimizer`` and ``param_schedulers`` hold plain Python
    values and tensors, which ``weights_only`` accepts anyway. numpy 1.x
    wrote ``numpy.core.*`` names, numpy 2 writes ``numpy._core.*``; both map
    to the installed functions.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    try:
        multiarray = np._core.multiarray
    except AttributeError:  # numpy 1.x
        multiarray = np.core.multiarray
    allowed: List[Any] = [HistoryBuffer, np.ndarray, np.dtype,
                          (_history_buffer_getattr, 'builtins.getattr'),
                          (_history_buffer_getattr, '__builtin__.getattr')]
    for core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed += [(multiarray._reconstruct, f'{core}._reconstruct'),
                    (multiarray.scalar, f'{core}.scalar')]
    # numpy 2 pickles a dtype's class for some dtypes (numpy.dtypes.Float64DType...).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return allowed


def trusted_by_user() -> bool:
    """Whether :data:`TRUST_ENV` opts in to full unpickling."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes')


def load_pth(filename: str, map_location=None) -> Any:
    """``torch.load`` a ``.pth`` with ``weights_only=True`` and :func:`mmengine_safe_globals`.

    Raises:
        pickle.UnpicklingError: The file needs a type outside the allow-list;
            the message names the file and the type, and how to opt in.
    """
    if trusted_by_user():
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # Keep torch's reason, not its advice (which is to allow-list the type).
        detail = str(err).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0]
        detail = detail.split('. Please use')[0].split(' was not an allowed global')[0]
        raise pickle.UnpicklingError(
            f'refusing to load {filename}: it needs pickle code outside the types mmengine '
            f'writes into checkpoints ({detail.strip()}). Unpickling such a file can run '
            'arbitrary code. If you trust this file (you wrote it, or it comes from a '
            f'trusted source), set {TRUST_ENV}=1 (or pass --trust-checkpoint to '
            'tools/train.py / tools/test.py) to load it with full pickle; to share '
            'weights, use an adapters.safetensors file instead.') from None


def _loading_runner():
    """The mmengine ``Runner`` whose ``load_checkpoint`` is reading a file, if any.

    mmengine hands the loader a file name only; an adapter file can only be
    loaded correctly onto the model (its frozen weights come from the base
    SAM of the model's config), so the loader walks up the call stack to the
    frame of ``Runner.load_checkpoint`` (matched by name and by ``self``
    being a ``Runner``) and takes that runner. None when called otherwise
    (e.g. ``CheckpointLoader.load_checkpoint`` directly).
    """
    from mmengine.runner import Runner
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get('self')
        if frame.f_code.co_name == 'load_checkpoint' and isinstance(owner, Runner):
            return owner
        frame = frame.f_back
    return None


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None):
    """mmengine's ``load_from_local``, safe: see the module docstring.

    ``.safetensors`` files are read without pickle. An adapter file read by
    ``Runner.load_checkpoint`` is loaded onto the runner's model
    (:func:`~mmseg_naslora.engine.hooks.adapter_checkpoint_hook.adapter_file_checkpoint`)
    and the complete state dict is returned; read any other way, it becomes
    ``dict(state_dict=TENSORS, meta=dict(adapter_file=PATH, adapter_metadata=...))``
    (the :class:`AdapterCheckpointHook` then loads it onto the base model).
    Any other safetensors file gives ``dict(state_dict=...)``. Other files
    go through :func:`load_pth`.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if filename.endswith('.safetensors'):
        from ..models.utils.adapter_io import (FORMAT, read_adapters,
                                               read_safetensors_metadata)
        if read_safetensors_metadata(filename).get('format') != FORMAT:
            from safetensors.torch import load_file
            return dict(state_dict=load_file(filename))
        runner = _loading_runner()
        if runner is not None:
            from .hooks.adapter_checkpoint_hook import adapter_file_checkpoint
            return adapter_file_checkpoint(runner, filename)
        tensors, metadata = read_adapters(filename)
        return dict(state_dict=tensors,
                    meta=dict(adapter_file=filename, adapter_metadata=metadata))
    return load_pth(filename, map_location=map_location)

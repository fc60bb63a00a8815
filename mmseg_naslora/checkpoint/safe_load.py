"""Loading ``.pth`` checkpoints without running pickle code.

mmengine's training checkpoints hold more than tensors (the message hub's
``HistoryBuffer`` objects, numpy arrays and scalars), so a plain
``weights_only=True`` load refuses them and a ``weights_only=False`` load runs
whatever code a file carries. :func:`load_pth` loads with ``weights_only=True``
plus :func:`mmengine_safe_globals`, exactly the types mmengine 0.10 writes into
``meta``/``message_hub``/``optimizer``/``param_schedulers`` (found by saving
real checkpoints and listing their globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``). The allow-list is
scoped to the call (``torch.serialization.safe_globals``), not added
process-wide. Anything else is refused with a message that says how to opt in
for a trusted file (:data:`TRUST_ENV`, or ``--trust-checkpoint`` of the tools).
"""
import os
import pickle
from typing import Any, List

import torch

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

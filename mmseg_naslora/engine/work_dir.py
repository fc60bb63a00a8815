"""One training run per work dir: the lock, the resume checkpoint, no silent overwrite.

mmengine 0.10.7 resumes from the absolute path stored in
``work_dir/last_checkpoint`` (a copied work dir resumes from the original
directory, a moved one fails), trains from scratch over existing checkpoints
when there is no ``last_checkpoint`` or nothing to resume, and lets two runs
share a work dir. :func:`prepare_train_work_dir` is called by
``tools/train.py`` before the runner is built and by the
:class:`~mmseg_naslora.engine.hooks.WorkDirGuardHook` (``before_run``) for any
other runner:

- it takes an exclusive lock on ``work_dir/.lock`` (``fcntl.flock``, which
  the kernel releases when the process dies, so a crashed run never leaves a
  stale lock) and writes the holder's pid, host and command into it; a second
  run is refused with a message naming that process. In distributed runs
  only rank 0 locks (every rank shares the work dir);
- it removes temp files left by a killed atomic save;
- ``resume=True`` resolves the newest checkpoint *in the work dir itself*
  (:func:`find_latest_checkpoint`), or refuses when there is none;
- without ``resume``, a work dir that already holds checkpoints is refused
  unless ``overwrite=True`` (``tools/train.py --overwrite``).
"""
import json
import logging
import os
import os.path as osp
import re
import socket
import sys
import time
from typing import Dict, List, Optional

from mmengine.logging import print_log

from ..checkpoint.atomic_io import remove_stale_tmp

LOCK_FILE = '.lock'
LAST_CHECKPOINT = 'last_checkpoint'
#: Checkpoint names of mmengine's CheckpointHook (default ``filename_tmpl``).
CHECKPOINT_PATTERN = re.compile(r'^(?P<unit>iter|epoch)_(?P<step>\d+)\.pth$')

# Locks this process holds, by real work-dir path: a second Runner in the
# same process (the tool, then the hook; or a resume in a notebook) reuses it.
_HELD: Dict[str, int] = {}


class WorkDirError(RuntimeError):
    """A work dir cannot be used for this run; the message says why and what to do."""


def _rank() -> int:
    from mmengine.dist import get_rank, is_distributed
    if is_distributed():
        return get_rank()
    # Before the process group exists (tools/train.py), torchrun/slurm tell the rank.
    for var in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK'):
        if os.environ.get(var, '').isdigit():
            return int(os.environ[var])
    return 0


def lock_work_dir(work_dir: str) -> Optional[int]:
    """Take the exclusive lock of ``work_dir`` for this process (rank 0 only).

    Returns:
        int or None: The lock's file descriptor (None on ranks > 0 and where
        ``fcntl`` does not exist, e.g. Windows).

    Raises:
        WorkDirError: Another live process holds the lock; the message
            names its pid, host, start time and command.
    """
    if _rank() != 0:
        return None
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    real = osp.realpath(work_dir)
    if real in _HELD:
        return _HELD[real]
    os.makedirs(real, exist_ok=True)
    path = osp.join(real, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise WorkDirError(
            f'work_dir {work_dir} is in use by another training run ({_describe_holder(path)}). '
            'Two runs in one work dir overwrite each other\'s checkpoints and logs. Wait for '
            'it to finish or stop it, or train into another --work-dir.') from None
    info = dict(pid=os.getpid(), host=socket.gethostname(),
                started=time.strftime('%Y-%m-%d %H:%M:%S'), command=' '.join(sys.argv))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    _HELD[real] = fd
    return fd


def _describe_holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.loads(f.read() or '{}')
    except (OSError, ValueError):
        info = {}
    if not info:
        return f'the lock {path} is held'
    return (f'pid {info.get("pid")} on host {info.get("host")}, started {info.get("started")}: '
            f'{info.get("command")}; lock file {path}')


def unlock_work_dir(work_dir: str) -> None:
    """Release a lock taken by :func:`lock_work_dir` in this process."""
    fd = _HELD.pop(osp.realpath(work_dir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _step(name: str) -> Optional[int]:
    match = CHECKPOINT_PATTERN.match(name)
    return int(match['step']) if match else None


def list_checkpoints(work_dir: str) -> List[str]:
    """``iter_N.pth``/``epoch_N.pth`` in ``work_dir``, oldest (lowest N) first."""
    try:
        names = os.listdir(work_dir)
    except OSError:
        return []
    return [osp.join(work_dir, n) for n in sorted(
        (n for n in names if _step(n) is not None), key=lambda n: (_step(n), n))]


def find_latest_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint of ``work_dir``, looked up in ``work_dir`` itself.

    ``last_checkpoint`` is read for the *file name* only (mmengine stores an
    absolute path, which points into the original directory after a copy and
    nowhere after a move); the file must exist in ``work_dir``. The highest
    ``iter_N.pth``/``epoch_N.pth`` is taken when it is newer than that file
    or when ``last_checkpoint`` is missing or names no file here.

    Returns:
        str or None: A path inside ``work_dir``, or None if it holds none.
    """
    numbered = list_checkpoints(work_dir)
    latest = numbered[-1] if numbered else None
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    if osp.isfile(pointer):
        with open(pointer) as f:
            recorded = f.read().strip()
        own = osp.join(work_dir, osp.basename(recorded)) if recorded else None
        if own and osp.isfile(own):
            step = _step(osp.basename(own))
            if latest is None or step is None or step >= _step(osp.basename(latest)):
                latest = own
            if osp.abspath(recorded) != osp.abspath(own):
                print_log(f'{pointer} names {recorded}, outside this work dir (a copied or '
                          f'moved work dir); using the work dir\'s own {own}.',
                          logger='current', level=logging.WARNING)
    return latest


def existing_outputs(work_dir: str) -> List[str]:
    """Files of an earlier run that a new training would overwrite."""
    try:
        names = os.listdir(work_dir)
    except OSError:
        return []
    return sorted(n for n in names if _step(n) is not None or n == LAST_CHECKPOINT
                  or (n.startswith('best_') and n.endswith('.pth')))


def prepare_train_work_dir(work_dir: str, resume: bool = False,
                           load_from: Optional[str] = None,
                           overwrite: bool = False) -> Optional[str]:
    """Lock ``work_dir`` and decide what a training run into it starts from.

    Args:
        work_dir (str): The run's work dir.
        resume (bool): ``--resume``/``cfg.resume``.
        load_from (str, optional): ``cfg.load_from``; with ``resume`` it is
            the checkpoint to resume from (mmengine's rule).
        overwrite (bool): Allow a new run over existing checkpoints.

    Returns:
        str or None: The checkpoint to resume from (``resume`` without
        ``load_from``), else None.

    Raises:
        WorkDirError: Locked by another run; ``resume`` with nothing to
            resume from; existing checkpoints without ``resume``/``overwrite``.
    """
    lock_work_dir(work_dir)
    for path in remove_stale_tmp(work_dir):
        print_log(f'removed {path}, left behind by a killed save', logger='current')
    if resume and load_from is None:
        latest = find_latest_checkpoint(work_dir)
        if latest is None:
            raise WorkDirError(
                f'--resume: nothing to resume from in {work_dir} (no iter_*.pth/epoch_*.pth '
                f'checkpoint and no {LAST_CHECKPOINT} naming one there). Check --work-dir '
                '(it defaults to work_dirs/CONFIG_NAME), or drop --resume to start a new run.')
        return latest
    if not resume:
        found = existing_outputs(work_dir)
        if found and not overwrite:
            shown = ', '.join(found[:6]) + (', ...' if len(found) > 6 else '')
            raise WorkDirError(
                f'work_dir {work_dir} already holds checkpoints of an earlier run ({shown}); '
                'a new training would overwrite them. Continue that run with --resume, train '
                'into a new --work-dir, or pass --overwrite (default_hooks.work_dir_guard.'
                'overwrite=True) to replace them.')
    return None

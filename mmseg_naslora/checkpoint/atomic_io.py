"""The one atomic-write and the one file-hashing helper of the package.

Every file the package and its tools write (training checkpoints, adapter
files, exports, the α architecture, the sha256 cache) goes through
:func:`atomic_write`: the bytes go to ``.NAME.tmpPID`` in the target's
folder, are flushed and fsynced, and only then moved onto ``NAME`` with
``os.replace`` (atomic on POSIX and Windows). A crash, a kill or a full disk
therefore leaves the previous file intact, never a truncated one.

A ``kill -9`` during a write cannot run the cleanup, so its temp file stays
behind; :func:`remove_stale_tmp` deletes those whose writer process is gone
(every write does this for its own target, and a training run does it for
its whole work dir once it holds the work-dir lock).

This module imports neither mmengine nor the models, so tools can use it
without side effects.
"""
import errno
import hashlib
import json
import os
import os.path as osp
import re
from typing import Any, BinaryIO, Callable, Dict, List, Optional

#: ``.NAME.tmpPID``: the temp-file name of :func:`atomic_write`.
TMP_PATTERN = re.compile(r'^\.(?P<name>.+)\.tmp(?P<pid>\d+)$')
_NO_SPACE = (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC))


def tmp_path_for(path: str, pid: Optional[int] = None) -> str:
    """The temp file :func:`atomic_write` uses for ``path`` in process ``pid``."""
    folder = osp.dirname(osp.abspath(path))
    return osp.join(folder, f'.{osp.basename(path)}.tmp{os.getpid() if pid is None else pid}')


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def remove_stale_tmp(folder: str, name: Optional[str] = None) -> List[str]:
    """Delete temp files of :func:`atomic_write` whose writer process is gone.

    Args:
        folder (str): Folder to clean.
        name (str, optional): Only temp files of this target file name.
            Defaults to all.

    Returns:
        list[str]: The removed paths.
    """
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = TMP_PATTERN.match(entry)
        if match is None or (name is not None and match['name'] != name):
            continue
        pid = int(match['pid'])
        # A live pid may be another writer right now (or, across hosts on a
        # shared disk, an unrelated process): leave those alone.
        if pid == os.getpid() or _pid_alive(pid):
            continue
        path = osp.join(folder, entry)
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _no_space_error(err: BaseException) -> Optional[OSError]:
    """The ENOSPC/EDQUOT ``OSError`` behind ``err`` (torch hides it as context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> str:
    """Write ``path`` atomically: ``write(file)`` into a temp file, fsync, rename.

    Args:
        path (str): The final file.
        write (callable): Called with the open binary temp file; writes the
            content (e.g. ``lambda f: torch.save(obj, f)``).

    Returns:
        str: ``path``.

    Raises:
        OSError: With ``errno.ENOSPC`` and a message naming ``path`` and the
            free space when the disk (or quota) is full; ``path`` is untouched.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_tmp(folder, osp.basename(path))
    tmp = tmp_path_for(path)
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        full = _no_space_error(err)
        if full is None:
            raise
        try:
            free = f'{os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize / 2**20:.1f} MiB'
        except (OSError, AttributeError):
            free = 'unknown'
        previous = ('the previous file is intact' if osp.exists(path) else
                    'nothing was written')
        raise OSError(full.errno,
                      f'no space left on device while writing {path} (free in {folder}: '
                      f'{free}); {previous}. Free disk space or write elsewhere '
                      '(--work-dir / --out) and retry.', path) from err
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` with :func:`atomic_write`."""
    import torch
    return atomic_write(path, lambda f: torch.save(obj, f))


# Hashing --------------------------------------------------------------------------
_HASH_CACHE: Dict[tuple, str] = {}
_HASH_CACHE_FILE = osp.join(osp.expanduser(os.environ.get('XDG_CACHE_HOME', '~/.cache')),
                            'mmseg_naslora', 'sha256.json')


def _read_hash_cache() -> dict:
    try:
        with open(_HASH_CACHE_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def sha256_file(path: str) -> str:
    """sha256 (hex) of ``path``, cached by (real path, size, mtime).

    The cache lives in memory and in ``~/.cache/mmseg_naslora/sha256.json``
    (``$XDG_CACHE_HOME``), so a 2.5 GB ViT-H file is hashed once per
    machine, not at every save; a replaced file has another size or mtime
    and is hashed again.
    """
    real = osp.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    disk = _read_hash_cache()
    digest = disk.get('|'.join(map(str, key)))
    if digest is None:
        h = hashlib.sha256()
        with open(real, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                h.update(chunk)
        digest = h.hexdigest()
        disk['|'.join(map(str, key))] = digest
        try:
            atomic_write_bytes(_HASH_CACHE_FILE, json.dumps(disk).encode())
        except OSError:  # a read-only or full home only loses the cache
            pass
    _HASH_CACHE[key] = digest
    return digest

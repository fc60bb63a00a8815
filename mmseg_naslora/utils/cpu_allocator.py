"""Keep glibc from handing freed tensor memory back to the OS between CPU steps."""
import ctypes
import ctypes.util
import os

from mmengine.logging import print_log

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
OPT_OUT = 'NASLORA_MALLOC_TUNING'


def tune_cpu_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds so that freed activations are reused.

    glibc serves every block above its mmap threshold (128 KiB at start, then
    adapting up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and
    trims the top of the heap when enough of it is free. A training step frees
    and re-allocates the same activations every iteration, so each step
    page-faults them in again. With the thresholds fixed (``MMAP_THRESHOLD``,
    ``TRIM_THRESHOLD``) the memory stays in the heap and is reused. Peak RSS is
    unchanged; the process only keeps its peak instead of returning it.

    Training losses are bit-identical with and without it; the measured
    speed-ups are in ``docs/benchmarks.md`` ("CPU: keeping freed memory in the
    process"). This is the effect of
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (or of
    jemalloc/tcmalloc), applied from inside the process.

    Nothing is changed when ``NASLORA_MALLOC_TUNING=0``, when the user set
    either ``MALLOC_*_THRESHOLD_`` variable, or when the C library is not glibc.

    Returns:
        bool: Whether the thresholds were set.
    """
    if os.environ.get(OPT_OUT, '1') == '0' or any(
            f'MALLOC_{name}_THRESHOLD_' in os.environ for name in ('MMAP', 'TRIM')):
        return False
    path = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(path)
        glibc = libc.gnu_get_libc_version  # absent from musl and macOS
    except (OSError, TypeError, AttributeError):
        return False
    ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
          and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if ok:
        glibc.restype = ctypes.c_char_p
        print_log(f'glibc {glibc().decode()} malloc: mmap threshold '
                  f'{MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD / 2**30:.0f} GiB, '
                  f'so CPU steps reuse freed activations ({OPT_OUT}=0 turns this off).',
                  logger='current')
    return ok

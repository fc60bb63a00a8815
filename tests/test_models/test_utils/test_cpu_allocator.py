"""tune_cpu_allocator keeps freed tensor memory in the process (glibc only)."""
import os
import subprocess
import sys

import pytest

from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator

# Allocates 20 MiB (above glibc's initial 128 KiB mmap threshold), touches it, frees it,
# and prints how much resident memory the free gave back to the OS.
PROBE = """
import os, sys, torch
from mmseg_naslora.utils.cpu_allocator import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == 'tune' else False
page = os.sysconf('SC_PAGE_SIZE')
rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page
x = torch.empty(5 * 2**20).fill_(1.)
before = rss()
del x
print(tuned, (before - rss()) / 2**20)
"""


def probe(mode: str, **env) -> tuple:
    proc = subprocess.run([sys.executable, '-c', PROBE, mode], capture_output=True, text=True,
                          env=dict(os.environ, **env), check=True)
    tuned, released = proc.stdout.splitlines()[-1].split()
    return tuned == 'True', float(released)


glibc = pytest.mark.skipif(not sys.platform.startswith('linux') or
                           os.confstr('CS_GNU_LIBC_VERSION') is None, reason='needs glibc')


@glibc
def test_freed_activations_stay_in_the_process():
    assert probe('plain') == (False, pytest.approx(20, abs=1))  # unmapped on free
    tuned, released = probe('tune')
    assert tuned and released < 1  # kept in the heap for the next step


@glibc
@pytest.mark.parametrize('env', [dict(NASLORA_MALLOC_TUNING='0'),
                                 dict(MALLOC_MMAP_THRESHOLD_='65536')])
def test_opt_out_and_user_settings_are_respected(env):
    tuned, released = probe('tune', **env)
    assert not tuned and released == pytest.approx(20, abs=1)


def test_returns_false_when_opted_out(monkeypatch):
    monkeypatch.setenv('NASLORA_MALLOC_TUNING', '0')
    assert tune_cpu_allocator() is False

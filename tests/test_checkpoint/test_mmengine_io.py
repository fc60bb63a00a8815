"""Importing the package registers a loader and a backend, and patches nothing else."""
import subprocess
import sys

from conftest import REPO_ROOT

SNAPSHOT = r'''
import importlib, json
import torch  # noqa
import mmengine.fileio.backends.registry_utils as backends
from mmengine.runner.checkpoint import CheckpointLoader
MODULES = ['torch', 'torch.serialization', 'torch.nn.modules.module', 'mmengine.runner.runner',
           'mmengine.runner.checkpoint', 'mmengine.fileio', 'mmengine.fileio.io',
           'mmengine.fileio.backends.local_backend', 'mmengine.hooks.checkpoint_hook',
           'mmengine.model', 'mmseg.models.segmentors.encoder_decoder', 'mmseg.apis']

for name in MODULES:  # all imported first: importing one may wrap another's (torch.manual_seed)
    importlib.import_module(name)

def snapshot():
    out = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            out[f'{name}.{attr}'] = id(value)
        for cls_name, cls in vars(module).items():
            if isinstance(cls, type) and cls.__module__ == name:
                for attr, value in vars(cls).items():
                    out[f'{name}.{cls_name}.{attr}'] = id(value)
    return out

before = snapshot()
schemes = dict(CheckpointLoader._schemes)
file_backends = dict(backends.backends)
import mmseg_naslora  # noqa
after = snapshot()
print(json.dumps(dict(
    changed=sorted(k for k in before if after.get(k) != before[k]
                   and not k.endswith('CheckpointLoader._schemes')),  # compared below
    schemes=sorted(k for k in CheckpointLoader._schemes
                   if schemes.get(k) is not CheckpointLoader._schemes[k]),
    backends=sorted(k for k in backends.backends if k not in file_backends),
    replaced_backends=sorted(k for k in file_backends
                             if backends.backends[k] is not file_backends[k]))))
'''


def test_import_replaces_only_the_local_loader():
    import json
    proc = subprocess.run([sys.executable, '-c', SNAPSHOT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found['changed'] == []  # no function, class or attribute replaced
    assert found['schemes'] == ['']  # the one override (see mmengine_io's docstring)
    assert found['backends'] == ['atomic_local'] and found['replaced_backends'] == []

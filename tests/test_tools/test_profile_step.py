"""tools/analysis_tools/profile_step.py: one training step's time, by part of the model."""
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_profile_attributes_the_nas_cell(tmp_path):
    out = tmp_path / 'profile.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/profile_step.py', 'nas_lora_s2',
                           '--quick', '--out', str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    assert result['wall_ms'] > 0 and result['optimizer_ms'] > 0
    for part in ('cell', 'attention', 'mlp', 'decoder'):
        assert result['forward_ms'][part] > 0, part
        assert result['backward_ms'][part] > 0, part

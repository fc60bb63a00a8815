"""tools/analysis_tools/benchmark_loss.py: MaskSetLoss on the full grid and on sampled points."""
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

CONFIG = 'configs/litemedsam/lora-set_litemedsam_1xb4-100_camvid-96x128.py'


def test_grid_and_points_rows(tmp_path):
    out = tmp_path / 'loss.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/benchmark_loss.py', CONFIG,
                           '--batch-size', '2', '--num-points', '1024', '--repeat', '1',
                           '--out', str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    meta, rows = result['meta'], {r['variant']: r for r in result['rows']}
    # LiteMedSAM's decoder gives masks at the input size (embed_stride 4).
    assert meta['size'] == meta['grid'] == [96, 128]
    assert meta['batch_size'] == 2 and meta['classes'] == 11 and meta['queries'] == 22
    assert rows['full_grid']['num_points'] is None
    assert rows['full_grid']['positions'] == 96 * 128
    assert rows['mask2former_points']['num_points'] == rows['mask2former_points'][
        'positions'] == 1024
    for row in rows.values():
        assert row['fwd_bwd_ms'] > 0 and row['peak_mib'] > meta['inputs_mib']
        assert row['variant'] in proc.stdout  # the markdown table

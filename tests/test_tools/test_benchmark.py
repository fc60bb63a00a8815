"""tools/analysis_tools/benchmark.py --quick: every method row and column, from a real run."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis_tools'))
import benchmark  # noqa: E402
import benchmark_models  # noqa: E402

COLUMNS = ('trainable_params', 'alpha_params', 'model_mb', 'train_step_ms', 'train_step_ms_all',
           'peak_train_mem_mb', 'flops_per_step', 'achieved_flops', 'infer_ms',
           'export_mode', 'infer_export_ms', 'export_max_abs_diff', 'infer_vs_frozen',
           'export_vs_frozen', 'ratio_to_lora', 'ratio_to_full')


def run_tool(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/benchmark.py', *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    proc = run_tool('--quick', '--out', str(out))
    with open(out) as f:
        return json.load(f), proc.stdout


def test_quick_run_has_every_row_and_column(quick):
    result, stdout = quick
    rows = {r['method']: r for r in result['rows']}
    expected = [m for m in benchmark_models.METHODS
                if m != 'sam2lora' or benchmark_models.sam2_available()]
    assert list(rows) == expected
    for name, row in rows.items():
        assert 'error' not in row, (name, row.get('error'))
        missing = [c for c in COLUMNS if c not in row]
        assert not missing, (name, missing)
        assert len(row['train_step_ms_all']) == 2  # --quick: 2 timed steps
        for key in ('train_step_ms', 'infer_ms', 'flops_per_step', 'achieved_flops',
                    'peak_train_mem_mb'):
            assert row[key] > 0, (name, key)
        assert set(row['ratio_to_lora']) == set(benchmark.RATIO_KEYS)
        assert row['label'] in stdout  # the markdown table
    meta = result['meta']
    assert meta['matmul_peak_flops'] > 0 and 'random weights' in meta['weights']
    assert meta['batch_size'] == 2 and meta['steps'] == 2 and meta['warmup'] == 1


def test_quick_run_values_are_consistent(quick):
    rows = {r['method']: r for r in quick[0]['rows']}
    # Ratios come from the same run, against the lora and full rows.
    for key, value in rows['lora']['ratio_to_lora'].items():
        assert value is None or value == pytest.approx(1.), key
    assert rows['full']['ratio_to_full']['train_step_ms'] == pytest.approx(1.)
    ratio = rows['conv_lora']['ratio_to_lora']['train_step_ms']
    assert ratio == pytest.approx(rows['conv_lora']['train_step_ms']
                                  / rows['lora']['train_step_ms'])
    # Trainable parameters: decoder only < LoRA < full fine-tuning; α only in NAS rows.
    params = {k: r['trainable_params'] for k, r in rows.items()}
    assert params['frozen'] < params['lora'] < params['full']
    assert all((rows[k]['alpha_params'] > 0) == k.startswith('nas') for k in rows)
    # The joint stage-2 step is one forward/backward, as stage 1; the alternating one adds
    # an α forward/backward.
    flops = {k: r['flops_per_step'] for k, r in rows.items()}
    assert flops['nas_lora_s2'] == pytest.approx(flops['nas_lora_s1'], rel=0.05)
    assert flops['nas_lora_s2_alt'] > 1.5 * flops['nas_lora_s1']
    # Exports: folding and collapsing are exact, top-k is an approximation.
    assert rows['lora']['export_mode'] == 'fold'
    assert rows['lora']['export_max_abs_diff'] < 1e-4
    assert rows['nas_lora_linbn_s2']['export_mode'] == 'collapse'
    assert rows['nas_lora_linbn_s2']['export_max_abs_diff'] < 1e-4
    assert rows['nas_lora_s2']['export_mode'] == 'topk2'
    assert rows['nas_lora_s2']['export_max_abs_diff'] > 0
    for name in ('frozen', 'full', 'conv_lora'):
        assert rows[name]['export_mode'] is None and rows[name]['infer_export_ms'] is None
        assert rows[name]['export_vs_frozen'] is None
    # Inference is also timed in turns with the frozen model of the same arch.
    assert rows['frozen']['infer_vs_frozen'] == 1.0
    for name, row in rows.items():
        if name == 'sam2lora':  # another backbone: no frozen SAM reference
            assert row['infer_vs_frozen'] is None and row['export_vs_frozen'] is None
        elif name != 'frozen':
            assert row['infer_vs_frozen'] > 0
            assert (row['export_vs_frozen'] is None) == (row['export_mode'] is None)
    assert quick[0]['meta']['malloc_tuned'] in (True, False)


def test_infer_only_times_inference_and_export_alone(tmp_path):
    out = tmp_path / 'infer.json'
    proc = run_tool('--quick', '--infer-only', '--methods', 'frozen', 'lora', 'nas_lora_linbn_s2',
                    '--out', str(out))
    with open(out) as f:
        result = json.load(f)
    rows = {r['method']: r for r in result['rows']}
    cell = rows['nas_lora_linbn_s2']
    assert cell['train_step_ms'] is None and cell['flops_per_step'] is None
    assert cell['infer_ms'] > 0 and cell['infer_export_ms'] > 0
    assert cell['export_mode'] == 'collapse' and cell['export_max_abs_diff'] < 1e-4
    assert cell['export_vs_frozen'] > 0
    # FLOPs, exact where time is noisy: folded LoRA is the frozen model, the collapsed
    # cell keeps its rank-r products and one r x r convolution per qkv.
    assert rows['frozen']['infer_flops_vs_frozen'] == 1.
    assert rows['lora']['export_flops_vs_frozen'] == 1.
    assert rows['lora']['infer_flops_vs_frozen'] > 1. and cell['export_flops_vs_frozen'] > 1.
    assert result['meta']['infer_only'] and 'inference only' in proc.stdout

"""tools/analysis_tools/fake_memory.py: exact tensor accounting of a training step, fake or real."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis_tools'))
import benchmark_models  # noqa: E402
import memory_tracker  # noqa: E402

MIB = 2**20


def run_tool(out, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'tools/analysis_tools/fake_memory.py', '--quick',
                           '--out', str(out), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    return run_tool(tmp_path_factory.mktemp('fakemem') / 'fake.json')


@pytest.fixture(scope='module')
def rows(fake):
    return {r['method']: r for r in fake[0]['rows']}


def blocks(numel: int, itemsize: int = 4) -> int:
    """Bytes of one fp32 tensor in 512-byte CUDA allocator blocks."""
    block = memory_tracker.CUDA_BLOCK_BYTES
    return -(-numel * itemsize // block) * block


def model_bytes(method: str) -> dict:
    """The exact params/buffers/grads/AdamW-state bytes of ``method``'s tiny model."""
    args = benchmark_models.parse_model_args(benchmark_models.model_parser('test'), ['--quick'])
    model = benchmark_models.build(args, method)[0]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return dict(
        params=sum(blocks(p.numel()) for p in model.parameters()),
        buffers=sum(blocks(b.numel(), b.element_size()) for b in model.buffers()),
        # exp_avg and exp_avg_sq: two fp32 tensors per trainable one (α included)
        optimizer=sum(2 * blocks(p.numel()) for _, p in trainable),
        # the joint step's one backward fills every trainable gradient, α's included
        grads=sum(blocks(p.numel()) for _, p in trainable),
        trainable=sum(p.numel() for _, p in trainable))


def test_every_row_and_column(fake, rows):
    result, stdout = fake
    expected = [m for m in benchmark_models.METHODS
                if m != 'sam2lora' or benchmark_models.sam2_available()]
    assert list(rows) == expected
    for name, row in rows.items():
        assert 'error' not in row, (name, row.get('error'))
        assert set(row['at_peak_mib']) == set(memory_tracker.MEMORY_KINDS)
        assert row['peak_mib'] == pytest.approx(sum(row['at_peak_mib'].values()))
        assert row['peak_phase'] in ('forward', 'backward', 'optimizer')
        assert row['label'] in stdout  # the markdown table
    meta = result['meta']
    assert meta['fake'] and meta['dtype'] == 'float32' and meta['block_bytes'] == 512
    assert 'FakeTensorMode' in meta['method']
    # Only Conv-LoRA routes with data-dependent nonzero: its row is an upper bound.
    assert [k for k, r in rows.items() if r['upper_bound']] == ['conv_lora']


@pytest.mark.parametrize('method', ['frozen', 'full', 'lora', 'nas_lora_s2'])
def test_static_parts_are_exact(rows, method):
    row, exact = rows[method], model_bytes(method)
    assert row['trainable_params'] == exact['trainable']
    start = {k: round(v * MIB) for k, v in row['start_mib'].items()}
    assert start['params'] == exact['params']
    assert start['buffers'] == exact['buffers']
    assert start['optimizer'] == exact['optimizer']  # AdamW state = 2x trainable
    assert start['grads'] == 0  # zero_grad(set_to_none) after the previous step
    assert round(row['max_mib']['grads'] * MIB) == exact['grads']
    # The state is updated in place: constant through the step.
    assert round(row['max_mib']['optimizer'] * MIB) == exact['optimizer']


def test_peak_order(rows):
    peak = {k: r['peak_mib'] for k, r in rows.items()}
    assert peak['full'] > peak['lora'] > peak['frozen']
    # Full fine-tuning peaks in its optimiser step, where every gradient, the
    # state and the foreach temporaries (sqrt of exp_avg_sq) are live.
    full = rows['full']
    assert full['peak_phase'] == 'optimizer'
    assert full['at_peak_mib']['grads'] == pytest.approx(full['max_mib']['grads'])


def test_with_cp_lowers_lora_activations(rows, tmp_path):
    result, _ = run_tool(tmp_path / 'cp.json', '--with-cp', '--methods', 'lora')
    cp = result['rows'][0]
    assert result['meta']['with_cp']
    assert cp['max_mib']['activations'] < rows['lora']['max_mib']['activations']
    assert cp['peak_mib'] < rows['lora']['peak_mib']
    # Checkpointing changes no parameter, gradient or state.
    for kind in ('params', 'grads', 'optimizer'):
        assert cp['max_mib'][kind] == pytest.approx(rows['lora']['max_mib'][kind])


def test_fake_matches_real_tensors(rows, tmp_path):
    methods = ['frozen', 'full', 'lora', 'conv_lora', 'nas_lora_s2']
    result, _ = run_tool(tmp_path / 'real.json', '--real-tensors', '--methods', *methods)
    assert not result['meta']['fake']
    for real in result['rows']:
        fake = rows[real['method']]
        if fake['upper_bound']:  # every expert charged every sample: not below real
            assert fake['peak_mib'] >= real['peak_mib']
            continue
        assert fake['peak_mib'] == pytest.approx(real['peak_mib'], rel=0.02), real['method']
        for kind, value in real['at_peak_mib'].items():
            assert fake['at_peak_mib'][kind] == pytest.approx(value, rel=0.02, abs=0.01)

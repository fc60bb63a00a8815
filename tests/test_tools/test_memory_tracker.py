"""tools/analysis_tools/memory_tracker.py against the CPU allocator's own record of a step."""
import gc
import os.path as osp
import sys

import pytest
import torch
from conftest import REPO_ROOT
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis_tools'))
import benchmark_models  # noqa: E402
import memory_tracker  # noqa: E402


@pytest.fixture
def one_thread():
    """Op-internal scratch buffers (matmul packing) grow with the thread count: use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('method', ['lora', 'full'])
def test_tracker_matches_cpu_allocator(method, one_thread):
    """Independent check of the accounting: every c10 CPU allocation of a real step."""
    args = benchmark_models.parse_model_args(benchmark_models.model_parser('test'), ['--quick'])
    model, wrapper, batch, _ = benchmark_models.build(args, method, gpu_like=True)

    def plan():
        # What NASStageHook gives a stage-2 iteration: α steps (these models have none).
        if hasattr(model, 'set_step_plan'):
            model.set_step_plan(model.nas_stage, True)

    model.train()
    plan()
    model.train_step(batch, wrapper)
    gc.collect()
    plan()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with memory_tracker.StorageTracker(block=1).start(
                model, [wrapper.optimizer], benchmark_models.batch_tensors(batch)) as tracker:
            start = tracker.total
            model.train_step(batch, wrapper)
    kineto = getattr(getattr(prof.profiler, 'kineto_results', None), 'events', None)
    if kineto is None:
        pytest.skip('this torch.profiler exposes no raw memory events')
    events = sorted((e for e in kineto() if e.name() == '[memory]'), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:  # allocations (+bytes) and frees (-bytes) in time order
        live += event.nbytes()
        peak = max(peak, live)
    assert events and live == pytest.approx(0, abs=4096)  # a step leaves nothing behind
    # The tracker sees every tensor but no op-internal buffer, of which the
    # largest here is the int64 nonzero() index that mmseg's boolean label
    # masks (B, H, W) make inside the loss's index op: 24 bytes a pixel.
    nonzero_index = args.batch_size * args.size**2 * 3 * 8
    assert 0 <= peak - (tracker.peak - start) <= nonzero_index + 4096

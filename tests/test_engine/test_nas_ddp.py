"""NASDistributedDataParallel: a 2-process gloo run on the CPU through mmengine's Runner.

The test launches this file with ``torch.distributed.run`` (2 processes). Each
rank trains the tiny NAS model on its own shard of the data through
``Runner(launcher='pytorch')`` with the NAS DDP wrapper, records what it saw,
and saves its final parameters; the test then compares the ranks.
"""
import os
import os.path as osp
import subprocess
import sys
import uuid

import pytest
import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))  # tests/, for conftest when run as a script

from conftest import REPO_ROOT, make_binary_dataset, tiny_config  # noqa: E402

KVASIR_NAS = 'configs/naslora/naslora_sam-vit-b_1xb4-2k_kvasir-256x256.py'
MAX_ITERS = 6
WARMUP = 2


@pytest.mark.parametrize('search_step', ['joint', 'alternate'])
def test_two_ranks_end_with_identical_alpha_and_weights(tmp_path, search_step):
    """Joint: one forward (one gradient all-reduce) per iteration, no unused-parameter search."""
    data = make_binary_dataset(str(tmp_path / 'data'), splits=(('train', 8), ('val', 2)))
    cfg = tiny_config(str(tmp_path / 'cfg.py'), data, base=KVASIR_NAS, max_iters=MAX_ITERS,
                      extra='\n'.join([
                          f"model['search_step'] = '{search_step}'",
                          "optim_wrapper = dict(weights=dict(optimizer=dict(lr=1e-3)),",
                          "                     alpha=dict(optimizer=dict(lr=5e-2)))",
                          f"custom_hooks = [dict(type='NASStageHook', warmup={WARMUP}, "
                          "by_epoch=False)]",
                          "default_hooks = dict(checkpoint=dict(interval=100, save_best=None))",
                          "env_cfg = dict(dist_cfg=dict(backend='gloo'))",
                          # find_unused_parameters is left to the wrapper: False for joint.
                          "model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')",
                      ]))
    out = tmp_path / 'out'
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         __file__, cfg, str(tmp_path / 'work'), str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [torch.load(out / f'rank{r}.pth', weights_only=False) for r in range(2)]

    # The ranks trained on different samples in every iteration...
    batches = [r['paths'] for r in ranks]
    assert len(batches[0]) == len(batches[1]) == MAX_ITERS
    for mine, theirs in zip(*batches):
        assert len(mine) == 2 and not set(mine) & set(theirs)
    # ...in the expected stages, with the steps isolated under DDP as well...
    searches = MAX_ITERS - WARMUP
    for r in ranks:
        assert r['stages'] == ['warmup'] * WARMUP + ['search'] * searches
        assert r['steps'].count('alpha') == searches
        assert r['steps'].count('weights') == MAX_ITERS
        assert r['find_unused_parameters'] is (search_step == 'alternate')
        if search_step == 'joint':
            assert r['forwards'] == MAX_ITERS
        else:
            assert r['forwards'] == MAX_ITERS + searches
            assert r['isolation_errors'] == []
    # ...and ended with identical α and trainable weights: gradients were averaged.
    params = [r['params'] for r in ranks]
    alpha = [k for k in params[0] if k.endswith('nas_alpha')]
    assert alpha and params[0].keys() == params[1].keys()
    for key in params[0]:
        assert torch.equal(params[0][key], params[1][key]), key
    assert any(not torch.equal(params[0][k], ranks[0]['alpha_at_start'][k]) for k in alpha)
    # Control: the same step without the DDP forward leaves the ranks apart.
    assert ranks[0]['bypass_alpha'].keys() == ranks[1]['bypass_alpha'].keys()
    assert any(not torch.equal(ranks[0]['bypass_alpha'][k], ranks[1]['bypass_alpha'][k])
               for k in alpha)


# The worker, run by torch.distributed.run ------------------------------------------
def _worker(cfg_path: str, work_dir: str, out_dir: str) -> None:
    import torch.distributed as dist
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    from mmseg_naslora.models.segmentors.nas_ddp_wrapper import NASDistributedDataParallel

    register_all_modules(init_default_scope=True)
    # mmengine's init_dist calls torch.cuda.set_device, which fails without a
    # GPU; an existing process group makes the runner skip it.
    dist.init_process_group('gloo')
    rank = dist.get_rank()

    cfg = Config.fromfile(cfg_path)
    cfg.launcher = 'pytorch'
    cfg.work_dir = work_dir
    cfg.experiment_name = f'ddp_{uuid.uuid4().hex}'
    cfg.train_cfg.val_interval = 1000
    runner = Runner.from_cfg(cfg)
    assert isinstance(runner.model, NASDistributedDataParallel), type(runner.model)
    module = runner.model.module
    alpha_names = [n for n, _ in module.arch_parameters()]
    record = dict(paths=[], stages=[], steps=[], isolation_errors=[], forwards=0,
                  find_unused_parameters=runner.model.find_unused_parameters,
                  alpha_at_start={n: p.detach().clone() for n, p in module.arch_parameters()})

    def count_forward(*args):
        record['forwards'] += 1

    runner.model.register_forward_pre_hook(count_forward)

    class Spy(Hook):
        priority = 'LOW'

        def before_train(self, runner):
            # The optim wrappers exist now; count and check every step.
            for name, wrapper in runner.optim_wrapper.items():
                wrapper.optimizer.step = spy_step(name, wrapper.optimizer.step)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            record['paths'].append([s.img_path for s in data_batch['data_samples']])
            record['stages'].append(module.nas_stage)

    def spy_step(name, step):
        def wrapped(*args, **kwargs):
            record['steps'].append(name)
            for pname, p in module.named_parameters():
                if p.grad is not None and (pname in alpha_names) != (name == 'alpha'):
                    record['isolation_errors'].append((name, pname))
            return step(*args, **kwargs)
        return wrapped

    runner.register_hook(Spy())
    runner.train()
    train_steps = list(record['steps'])
    record['params'] = {n: p.detach().clone() for n, p in module.named_parameters()
                        if p.requires_grad}

    # Control run: the module's own step, bypassing DDP's gradient all-reduce.
    batch = next(iter(runner.train_dataloader))
    module.nas_stage = 'search'
    module.train_step(batch, runner.optim_wrapper)
    record['bypass_alpha'] = {n: p.detach().clone() for n, p in module.arch_parameters()}
    record['steps'] = train_steps
    torch.save(record, osp.join(out_dir, f'rank{rank}.pth'))
    dist.destroy_process_group()


if __name__ == '__main__':
    _worker(*sys.argv[1:4])

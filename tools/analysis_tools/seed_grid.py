"""Train a grid of methods x seeds and print mean ± std of the validation metrics.

Each ``--run NAME CONFIG [KEY=VALUE ...]`` is one method: a config plus its own
``--cfg-options``. Every method is trained once per ``--seeds`` entry with
``tools/train.py`` (``randomness.seed`` set), each in ``WORK_DIR/NAME/seedS``;
the run's last validation metrics, wall time and (for NAS models) the
architecture found (``nas_arch.json``, written by ``NASAlphaLoggerHook``) are
kept in ``WORK_DIR/NAME/seedS/grid_result.json``. A finished cell is never
trained again, so an interrupted grid continues where it stopped.

Example, the measured search of ``docs/nas_training.md``::

    python tools/analysis_tools/seed_grid.py --work-dir work_dirs/search_grid \\
        --data-root ../shared/data/kvasir_seg --seeds 0 1 2 --jobs 2 \\
        --common train_cfg.max_iters=300 \\
        --run searched configs/litemedsam/naslora_litemedsam_1xb4-300_kvasir-128x128.py \\
        --run uniform configs/litemedsam/naslora_litemedsam_1xb4-300_kvasir-128x128.py \\
            custom_hooks.0.warmup=300 \\
        --run lora configs/litemedsam/lora_litemedsam_1xb4-300_kvasir-128x128.py

The table (markdown) goes to stdout and ``WORK_DIR/grid.md``; everything to
``WORK_DIR/grid.json``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from mmseg_naslora.checkpoint.atomic_io import atomic_write_bytes

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RESULT_FILE = 'grid_result.json'
ARCH_FILE = 'nas_arch.json'
DEFAULT_METRICS = ('Dice', 'Jaccard')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--run', nargs='+', action='append', required=True,
                        metavar='NAME CONFIG [KEY=VALUE ...]',
                        help='a method: its name, config and its own --cfg-options')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--data-root', help='passed to tools/train.py')
    parser.add_argument('--common', nargs='+', default=[], metavar='KEY=VALUE',
                        help='--cfg-options for every run (before each run\'s own)')
    parser.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS),
                        help='validation metrics to tabulate (keys of the val log)')
    parser.add_argument('--jobs', type=int, default=1, help='runs at a time')
    parser.add_argument('--threads', type=int,
                        help='torch threads per run (default: cpu_count / jobs)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the commands, train nothing')
    args = parser.parse_args(argv)
    for run in args.run:
        if len(run) < 2:
            parser.error(f'--run needs NAME CONFIG [KEY=VALUE ...], got {run}.')
        if not osp.isfile(run[1]):
            parser.error(f'--run {run[0]}: config {run[1]!r} does not exist.')
        bad = [o for o in run[2:] + args.common if '=' not in o]
        if bad:
            parser.error(f'--run {run[0]}: options must be KEY=VALUE, got {bad}.')
    names = [run[0] for run in args.run]
    if len(set(names)) != len(names):
        parser.error(f'--run names must be unique, got {names}.')
    if args.jobs < 1:
        parser.error(f'--jobs must be >= 1, got {args.jobs}.')
    return args


def train_command(args: argparse.Namespace, run: List[str], seed: int,
                  work_dir: str) -> List[str]:
    """The ``tools/train.py`` command line of one grid cell."""
    config, options = run[1], run[2:]
    # A cell without a result was interrupted: it starts again from scratch.
    command = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config,
               '--work-dir', work_dir, '--overwrite']
    if args.data_root:
        command += ['--data-root', args.data_root]
    return command + ['--cfg-options', f'randomness.seed={seed}', *args.common, *options]


def last_val_metrics(work_dir: str) -> Dict[str, float]:
    """The last validation metrics mmengine logged in ``work_dir`` (newest run)."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    metrics: Dict[str, float] = {}
    for path in logs[-1:]:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'lr' not in record and 'loss' not in record:  # a validation record
                    metrics = {k: v for k, v in record.items() if k not in ('step', 'iter')}
    if not metrics:
        raise RuntimeError(f'no validation metrics in {logs[-1:] or work_dir}: did the run '
                           'validate (train_cfg.val_interval)?')
    return metrics


def run_cell(args: argparse.Namespace, run: List[str], seed: int, threads: int) -> dict:
    """Train one (method, seed) cell unless it is done; return its result."""
    work_dir = osp.join(args.work_dir, run[0], f'seed{seed}')
    result_path = osp.join(work_dir, RESULT_FILE)
    if osp.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    command = train_command(args, run, seed, work_dir)
    if args.dry_run:
        print(' '.join(command))
        return {}
    os.makedirs(work_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(osp.join(work_dir, 'grid_train.log'), 'w') as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f'{run[0]} seed {seed} failed (exit {proc.returncode}); see '
                           f'{osp.join(work_dir, "grid_train.log")}.')
    result = dict(name=run[0], seed=seed, config=run[1], options=args.common + run[2:],
                  wall_s=round(wall, 1), threads=threads, metrics=last_val_metrics(work_dir))
    arch_path = osp.join(work_dir, ARCH_FILE)
    if osp.isfile(arch_path):
        with open(arch_path) as f:
            result['arch'] = json.load(f)
    atomic_write_bytes(result_path, json.dumps(result, indent=1).encode())
    print(f'[seed_grid] {run[0]} seed {seed}: ' + ', '.join(
        f'{k} {result["metrics"].get(k, float("nan")):.2f}' for k in args.metrics)
        + f' ({wall / 60:.1f} min)', flush=True)
    return result


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return '-'
    std = statistics.stdev(values) if len(values) > 1 else 0.
    return f'{statistics.mean(values):.2f} ± {std:.2f}'


def agreement(archs: Sequence[dict]) -> Optional[dict]:
    """Layers whose argmax op is the same in every seed's architecture."""
    if len(archs) < 2:
        return None
    per_seed = [[layer['argmax'] for layer in arch['layers']] for arch in archs]
    if len({len(p) for p in per_seed}) != 1:
        return None
    agree = [i for i, ops in enumerate(zip(*per_seed)) if len(set(ops)) == 1]
    return dict(agree=len(agree), layers=len(per_seed[0]),
                labels=[archs[0]['layers'][i]['label'] for i in agree])


def report(results: Dict[str, List[dict]], metrics: Sequence[str]) -> str:
    """The markdown summary of a finished grid."""
    lines = ['| method | seeds | ' + ' | '.join(metrics) + ' | wall time per run (min) |',
             '|---|---|' + '---|' * len(metrics) + '---|']
    for name, cells in results.items():
        row = [name, str(len(cells))]
        row += [mean_std([c['metrics'][m] for c in cells if m in c['metrics']]) for m in metrics]
        row.append(mean_std([c['wall_s'] / 60 for c in cells]))
        lines.append('| ' + ' | '.join(row) + ' |')
    for name, cells in results.items():
        archs = [c['arch'] for c in cells if c.get('arch')]
        if not archs:
            continue
        lines += ['', f'**{name}**: argmax op (largest softmax(α)) per layer and seed', '',
                  '| layer | ' + ' | '.join(f'seed {c["seed"]}' for c in cells) + ' |',
                  '|---|' + '---|' * len(cells)]
        for i, layer in enumerate(archs[0]['layers']):
            cells_txt = [f'{a["layers"][i]["argmax"]} ({max(a["layers"][i]["weights"]):.3f})'
                         for a in archs]
            lines.append(f'| {layer["label"]} | ' + ' | '.join(cells_txt) + ' |')
        agree = agreement(archs)
        if agree is not None:
            ops = len(archs[0]['primitives'])
            lines += ['', f'{agree["agree"]} of {agree["layers"]} layers agree on their argmax '
                      f'across the {len(archs)} seeds (chance: 1 in {ops ** (len(archs) - 1)} '
                      'per layer for uniform random argmaxes).']
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    cells = [(run, seed) for run in args.run for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda cell: run_cell(args, cell[0], cell[1], threads), cells))
    if args.dry_run:
        return
    results: Dict[str, List[dict]] = {}
    for (run, _), result in zip(cells, done):
        results.setdefault(run[0], []).append(result)
    table = report(results, args.metrics)
    print(table)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, 'grid.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(args.work_dir, 'grid.json'), 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()

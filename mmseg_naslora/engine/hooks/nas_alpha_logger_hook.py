"""Logs, stores and draws the architecture weights α while NAS-LoRA trains."""
import json
import logging
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ...checkpoint.atomic_io import atomic_write_bytes
from ...models.adapters.arch import ArchLayer, arch_layers
from ...utils.model import unwrap_model
from ...visualization import (HEATMAP_FILE, TRAJECTORY_FILE, arch_matrix, plot_heatmap,
                              plot_trajectory, short_labels)
from .nas_stage_hook import SEARCH_START_KEY

ARCH_FILE = 'nas_arch.json'


@HOOKS.register_module()
class NASAlphaLoggerHook(Hook):
    """Statistics, history, checkpoint meta and figures of softmax(α).

    Every ``interval`` iterations, per adapted layer (label ``blocks.i``):

    * ``nas/<layer>/entropy`` (nats; ln 8 ≈ 2.079 is uniform),
      ``nas/<layer>/max_weight`` (the largest softmax weight) and
      ``nas/<layer>/argmax`` (op index; names in the info ``nas/argmax``);
    * ``nas/<layer>/grad_snr``: per op ``|mean(∂L/∂α)| / std(∂L/∂α)`` over
      the backwards of the interval, averaged over the ops. Adam moves α by
      about lr per step when this is well above 1 and by much less when it
      is well below (the sign then flips from step to step), so it says
      whether a search has signal to follow. It is measured on each rank's
      own gradient, before any all-reduce.

    The means over layers go into the training log line as ``nas.entropy``,
    ``nas.max_weight`` (both updated every iteration) and ``nas.grad_snr``
    (the last interval's), and the per-layer values to the visualizer. At every checkpoint and after training the hook writes
    ``alpha_heatmap.png`` and ``alpha_trajectory.png`` (see
    :mod:`mmseg_naslora.visualization`) and ``nas_arch.json`` into the work
    dir, and stores ``checkpoint['meta']['nas_arch']`` and the α history
    ``checkpoint['meta']['nas_alpha_history']`` (the trajectory continues
    after a resume).

    Args:
        interval (int): Iterations between statistics (and trajectory
            points). Defaults to 50.
        plot (bool): Write the two figures. Defaults to True.
        max_history (int): Points kept for the trajectory; older points are
            thinned to every other one beyond it. Defaults to 500.
    """

    # Before LoggerHook (BELOW_NORMAL), so the log line of an iteration has its values.
    priority = 'NORMAL'

    def __init__(self, interval: int = 50, plot: bool = True, max_history: int = 500) -> None:
        if int(interval) != interval or interval < 1:
            raise ValueError(f'NASAlphaLoggerHook interval must be an integer >= 1, '
                             f'got {interval}.')
        if max_history < 2:
            raise ValueError(f'NASAlphaLoggerHook max_history must be >= 2, got {max_history}.')
        self.interval = int(interval)
        self.plot = plot
        self.max_history = int(max_history)
        self._history: List[Tuple[int, np.ndarray]] = []
        self._history_key: Optional[tuple] = None
        self._grads: Dict[int, List[torch.Tensor]] = {}
        self._handles: list = []
        self._snr: Optional[float] = None

    # Gradient sampling ------------------------------------------------------
    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        layers = arch_layers(model)
        for handle in self._handles:
            handle.remove()
        self._handles, self._grads, self._snr = [], {}, None
        if not layers:
            return
        for layer in layers:
            if not layer.alpha.requires_grad:
                continue
            self._grads[id(layer.alpha)] = samples = []
            # A tensor hook sees this backward's gradient, before accumulation.
            self._handles.append(layer.alpha.register_hook(
                lambda grad, samples=samples: samples.append(grad.detach().float().cpu())))
        self._history = [h for h in self._history if h[0] < runner.iter]
        self._record(layers, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        layers = arch_layers(unwrap_model(runner.model))
        if not layers:
            return
        labels = short_labels([la.name for la in layers])
        stats = {label: dict(entropy=float(-(la.weights * la.weights.clamp_min(1e-12).log()).sum()),
                             max_weight=float(la.weights.max()))
                 for label, la in zip(labels, layers)}
        if self.every_n_train_iters(runner, self.interval):
            self._interval_stats(runner, layers, labels, stats)
        # The log line's means, every iteration: LoggerHook averages a window of
        # iterations, which then holds the current values.
        for key in ('entropy', 'max_weight'):
            runner.message_hub.update_scalar(
                f'train/nas.{key}', float(np.mean([s[key] for s in stats.values()])))
        if self._snr is not None:
            runner.message_hub.update_scalar('train/nas.grad_snr', self._snr)

    def _interval_stats(self, runner, layers: List[ArchLayer], labels: List[str],
                        stats: Dict[str, Dict[str, float]]) -> None:
        """Per-layer scalars, the gradient SNR of the interval and a trajectory point."""
        scalars: Dict[str, float] = {}
        argmax_names: Dict[str, str] = {}
        snrs = []
        for label, layer in zip(labels, layers):
            snr = gradient_snr(self._grads.get(id(layer.alpha), []))
            if snr is not None:
                stats[label]['grad_snr'] = snr
                snrs.append(snr)
            best = int(layer.weights.argmax())
            scalars.update((f'nas/{label}/{k}', v) for k, v in stats[label].items())
            scalars[f'nas/{label}/argmax'] = best
            argmax_names[label] = layer.primitives[best]
        for samples in self._grads.values():
            samples.clear()
        self._snr = float(np.mean(snrs)) if snrs else None
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.message_hub.update_info('nas/argmax', argmax_names)
        runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        self._record(layers, runner.iter + 1)

    def _record(self, layers: List[ArchLayer], step: int) -> None:
        ops, matrix = arch_matrix(layers)
        key = (tuple(la.name for la in layers), tuple(ops))
        if key != self._history_key:
            self._history, self._history_key = [], key
        if self._history and self._history[-1][0] == step:
            self._history.pop()
        self._history.append((step, matrix))
        if len(self._history) > self.max_history:
            # Thin the older points; the newest one is always kept.
            self._history = self._history[:-1][::2] + self._history[-1:]

    # Checkpoints, files and figures ---------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap_model(runner.model)
        layers = arch_layers(model)
        if not layers:
            return
        meta = checkpoint.setdefault('meta', {})
        step = int(meta.get('iter', runner.iter))
        self._record(layers, step)
        meta['nas_arch'] = architecture(model)
        names, ops = self._history_key
        meta['nas_alpha_history'] = dict(
            layers=list(names), primitives=list(ops),
            iters=torch.tensor([s for s, _ in self._history]),
            weights=torch.from_numpy(np.stack([m for _, m in self._history])).float())
        self._write_outputs(runner, model, layers, step)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        history = checkpoint.get('meta', {}).get('nas_alpha_history')
        if not history:
            return
        self._history_key = (tuple(history['layers']), tuple(history['primitives']))
        self._history = [(int(s), m.numpy()) for s, m in
                         zip(history['iters'].tolist(), history['weights'])]

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        model = unwrap_model(runner.model)
        layers = arch_layers(model)
        if not layers:
            return
        self._record(layers, runner.iter)
        arch = architecture(model)
        lines = [f'  {layer["label"]}: {layer["argmax"]} ({max(layer["weights"]):.3f})'
                 for layer in arch['layers']]
        print_log('NASAlphaLoggerHook: final softmax(α) argmax per layer:\n' + '\n'.join(lines),
                  logger='current')
        self._write_outputs(runner, model, layers, runner.iter)

    def _write_outputs(self, runner, model: nn.Module, layers: List[ArchLayer],
                       step: int) -> None:
        if not is_main_process():
            return
        arch = dict(architecture(model), iter=step)
        atomic_write_bytes(osp.join(runner.work_dir, ARCH_FILE),
                           json.dumps(arch, indent=1).encode())
        if not self.plot:
            return
        try:
            ops, matrix = arch_matrix(layers)
            labels = short_labels([la.name for la in layers])
            stage = getattr(model, 'nas_stage', '')
            plot_heatmap(osp.join(runner.work_dir, HEATMAP_FILE), matrix, labels, ops,
                         title=f'softmax(α), {stage}, iter {step} (epoch {runner.epoch})')
            steps = np.array([s for s, _ in self._history])
            weights = np.stack([m for _, m in self._history])
            plot_trajectory(osp.join(runner.work_dir, TRAJECTORY_FILE), steps, weights,
                            labels, ops,
                            search_start=runner.message_hub.get_info(SEARCH_START_KEY))
        except Exception as err:  # a figure must never stop a long training run
            print_log(f'NASAlphaLoggerHook: could not write the α figures: {err!r}',
                      logger='current', level=logging.WARNING)


def gradient_snr(samples: List[torch.Tensor]) -> Optional[float]:
    """Mean over entries of ``|mean| / std`` of gradient samples (None below 2 samples).

    An entry whose gradient never changed (std 0, e.g. exactly 0 while B = 0)
    counts as 0 when its mean is 0 and is skipped otherwise.
    """
    if len(samples) < 2:
        return None
    stack = torch.stack(samples).double()
    mean, std = stack.mean(0).abs(), stack.std(0)
    snr = torch.where(std > 0, mean / std.clamp_min(1e-300),
                      torch.where(mean == 0, 0., float('nan')))
    snr = snr[torch.isfinite(snr)]
    return float(snr.mean()) if snr.numel() else None


def architecture(model: nn.Module) -> dict:
    """The current architecture: per layer its ops, softmax(α) and argmax op."""
    layers = arch_layers(model)
    union, _ = arch_matrix(layers)
    return dict(
        primitives=union,
        stage=getattr(model, 'nas_stage', None),
        layers=[dict(name=layer.name, label=label, primitives=list(layer.primitives),
                     weights=[round(float(p), 6) for p in layer.weights],
                     argmax=layer.primitives[int(layer.weights.argmax())])
                for label, layer in zip(short_labels([la.name for la in layers]), layers)])

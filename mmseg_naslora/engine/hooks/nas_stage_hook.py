"""Schedules the NAS-LoRA stages and shows the architecture weights."""
import logging
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import HOOKS

from ...models.adapters.nas_lora import ALPHA_MARKER

HEATMAP_FILE = 'alpha_heatmap.png'
TRAJECTORY_FILE = 'alpha_trajectory.png'


@HOOKS.register_module()
class NASStageHook(Hook):
    """Set ``model.nas_stage`` before every iteration and plot softmax(α).

    NAS-LoRA's stage-wise optimisation (Chen et al., 2025, arXiv:2512.03499):
    the weights train alone for the first T_B epochs (``warmup``), then α and
    the weights alternate (``search``); optionally α is frozen again from
    ``freeze_after`` on (``frozen``). The stage is derived from
    ``runner.epoch`` or ``runner.iter`` before each training iteration and
    nothing about it is stored, so a resumed run continues in the right stage.

    It also:

    * every ``interval`` iterations, puts each adapted layer's entropy of
      softmax(α) (nats) and argmax op (index into the layer's primitives)
      into the message hub (``nas/<layer>/entropy``, ``nas/<layer>/argmax``;
      op names in the info ``nas/argmax``) and the visualizer, and the mean
      entropy into the training log line (``nas.entropy``);
    * at every checkpoint and after training, writes ``alpha_heatmap.png``
      (layers x ops, annotated) and ``alpha_trajectory.png`` (op weights over
      iterations, per layer and averaged) into the work dir;
    * stores the current architecture in ``checkpoint['meta']['nas_arch']``
      and the α history in ``checkpoint['meta']['nas_alpha_history']`` (the
      trajectory continues after a resume).

    The model is reached only through ``runner.model``; α is every parameter
    whose name ends with ``ALPHA_MARKER``, its op names are the owning
    adapter's ``primitives``.

    Args:
        warmup (int): T_B, the length of stage 1 in epochs (``by_epoch``) or
            iterations. 0 searches from the start. Defaults to 10.
        by_epoch (bool): Count ``warmup``/``freeze_after`` in epochs (needs
            an epoch-based loop) or in iterations. Defaults to True.
        freeze_after (int, optional): Start of the optional stage 3, in the
            same unit; must exceed ``warmup``. Defaults to None (no stage 3).
        interval (int): Iterations between α statistics. Defaults to 50.
        plot (bool): Write the two figures. Defaults to True.
        max_history (int): Points kept for the trajectory; older points are
            thinned to every other one beyond it. Defaults to 500.
    """

    priority = 'NORMAL'

    def __init__(self,
                 warmup: int = 10,
                 by_epoch: bool = True,
                 freeze_after: Optional[int] = None,
                 interval: int = 50,
                 plot: bool = True,
                 max_history: int = 500) -> None:
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f'NASStageHook warmup (T_B) must be an integer >= 0, got {warmup}.')
        if freeze_after is not None and (int(freeze_after) != freeze_after
                                         or freeze_after <= warmup):
            raise ValueError(f'NASStageHook freeze_after ({freeze_after}) must be an integer '
                             f'greater than warmup ({warmup}), or None.')
        if int(interval) != interval or interval < 1:
            raise ValueError(f'NASStageHook interval must be an integer >= 1, got {interval}.')
        if max_history < 2:
            raise ValueError(f'NASStageHook max_history must be >= 2, got {max_history}.')
        self.warmup = int(warmup)
        self.by_epoch = by_epoch
        self.freeze_after = None if freeze_after is None else int(freeze_after)
        self.interval = int(interval)
        self.plot = plot
        self.max_history = int(max_history)
        self.unit = 'epoch' if by_epoch else 'iter'
        self._history: List[Tuple[int, np.ndarray]] = []
        self._history_key: Optional[tuple] = None
        self._search_start: Optional[int] = None
        self._active = True

    # Stage ----------------------------------------------------------------
    def stage_at(self, progress: int) -> str:
        """The stage of epoch/iteration ``progress`` (0-based)."""
        if progress < self.warmup:
            return 'warmup'
        if self.freeze_after is not None and progress >= self.freeze_after:
            return 'frozen'
        return 'search'

    def before_train(self, runner) -> None:
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            raise ValueError('NASStageHook(by_epoch=True) cannot count epochs in an '
                             'IterBasedTrainLoop; set by_epoch=False and give warmup in '
                             'iterations.')
        model = _unwrap(runner)
        has_alpha = bool(_alpha_layers(model))
        if not hasattr(model, 'nas_stage'):
            if has_alpha:
                raise TypeError(f'NASStageHook needs a segmentor with a `nas_stage` attribute '
                                f"(model type='NASEncoderDecoder'), got {type(model).__name__}.")
            print_log('NASStageHook: the model has no architecture parameters and no stage; '
                      'the hook does nothing.', logger='current', level=logging.WARNING)
            self._active = False
            return
        self._active = True
        length = runner.max_epochs if self.by_epoch else runner.max_iters
        if self.warmup >= length:
            print_log(f'NASStageHook: warmup T_B={self.warmup} {self.unit}s >= the training '
                      f'length ({length} {self.unit}s); α will never be searched.',
                      logger='current', level=logging.WARNING)
        self._search_start = (self.warmup * len(runner.train_dataloader)
                              if self.by_epoch else self.warmup)
        model.nas_stage = self.stage_at(self._progress(runner))
        frozen = '' if self.freeze_after is None else \
            f', α frozen again from {self.unit} {self.freeze_after}'
        print_log(f'NASStageHook: weights only for {self.warmup} {self.unit}s, then search'
                  f'{frozen}; starting in stage {model.nas_stage!r} at {self.unit} '
                  f'{self._progress(runner)}.', logger='current')
        if has_alpha:
            self._history = [h for h in self._history if h[0] < runner.iter]
            self._record(model, runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self._active:
            return
        model = _unwrap(runner)
        stage = self.stage_at(self._progress(runner))
        if stage != model.nas_stage:
            print_log(f'NASStageHook: stage {model.nas_stage!r} -> {stage!r} at epoch '
                      f'{runner.epoch}, iter {runner.iter}.', logger='current')
            model.nas_stage = stage

    def _progress(self, runner) -> int:
        return runner.epoch if self.by_epoch else runner.iter

    # Statistics -----------------------------------------------------------
    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not self._active or not self.every_n_train_iters(runner, self.interval):
            return
        model = _unwrap(runner)
        layers = _alpha_layers(model)
        if not layers:
            return
        step = runner.iter + 1
        scalars: Dict[str, float] = {}
        argmax_names: Dict[str, str] = {}
        entropies = []
        for label, (_, ops, probs) in zip(_short_labels([n for n, _, _ in layers]), layers):
            entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum())
            best = int(probs.argmax())
            entropies.append(entropy)
            argmax_names[label] = ops[best]
            scalars[f'nas/{label}/entropy'] = entropy
            scalars[f'nas/{label}/argmax'] = best
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.message_hub.update_info('nas/argmax', argmax_names)
        runner.message_hub.update_scalar('train/nas.entropy', float(np.mean(entropies)))
        runner.visualizer.add_scalars(scalars, step=step)
        self._record(model, step)

    def _record(self, model: nn.Module, step: int) -> None:
        names, ops, matrix = _arch_matrix(_alpha_layers(model))
        key = (tuple(names), tuple(ops))
        if key != self._history_key:
            self._history, self._history_key = [], key
        if self._history and self._history[-1][0] == step:
            self._history.pop()
        self._history.append((step, matrix))
        if len(self._history) > self.max_history:
            # Thin the older points; the newest one is always kept.
            self._history = self._history[:-1][::2] + self._history[-1:]

    # Checkpoints and figures ------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self._active:
            return
        model = _unwrap(runner)
        layers = _alpha_layers(model)
        if not layers:
            return
        meta = checkpoint.setdefault('meta', {})
        step = int(meta.get('iter', runner.iter))
        self._record(model, step)
        meta['nas_arch'] = self.architecture(model)
        names, ops = self._history_key
        meta['nas_alpha_history'] = dict(
            layers=list(names), primitives=list(ops),
            iters=torch.tensor([s for s, _ in self._history]),
            weights=torch.from_numpy(np.stack([m for _, m in self._history])).float())
        self._write_figures(runner, model, step)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        history = checkpoint.get('meta', {}).get('nas_alpha_history')
        if not history:
            return
        self._history_key = (tuple(history['layers']), tuple(history['primitives']))
        self._history = [(int(s), m.numpy()) for s, m in
                         zip(history['iters'].tolist(), history['weights'])]

    def after_train(self, runner) -> None:
        if not self._active:
            return
        model = _unwrap(runner)
        if not _alpha_layers(model):
            return
        self._record(model, runner.iter)
        arch = self.architecture(model)
        lines = [f'  {layer["label"]}: {layer["argmax"]} ({max(layer["weights"]):.3f})'
                 for layer in arch['layers']]
        print_log('NASStageHook: final softmax(α) argmax per layer:\n' + '\n'.join(lines),
                  logger='current')
        self._write_figures(runner, model, runner.iter)

    def architecture(self, model: nn.Module) -> dict:
        """The current architecture: per layer its ops and softmax(α)."""
        layers = _alpha_layers(model)
        names = [n for n, _, _ in layers]
        _, union, _ = _arch_matrix(layers)
        return dict(
            primitives=union,
            stage=getattr(model, 'nas_stage', None),
            layers=[dict(name=name, label=label, primitives=list(ops),
                         weights=[round(float(p), 6) for p in probs],
                         argmax=ops[int(probs.argmax())])
                    for label, (name, ops, probs) in zip(_short_labels(names), layers)])

    def _write_figures(self, runner, model: nn.Module, step: int) -> None:
        if not self.plot or not is_main_process():
            return
        try:
            names, ops, matrix = _arch_matrix(_alpha_layers(model))
            labels = _short_labels(names)
            stage = getattr(model, 'nas_stage', '')
            plot_heatmap(osp.join(runner.work_dir, HEATMAP_FILE), matrix, labels, ops,
                         title=f'softmax(α), {stage}, iter {step} (epoch {runner.epoch})')
            steps = np.array([s for s, _ in self._history])
            weights = np.stack([m for _, m in self._history])
            plot_trajectory(osp.join(runner.work_dir, TRAJECTORY_FILE), steps, weights,
                            labels, ops, search_start=self._search_start)
        except Exception as err:  # a figure must never stop a long training run
            print_log(f'NASStageHook: could not write the α figures: {err!r}',
                      logger='current', level=logging.WARNING)


# Model access -----------------------------------------------------------------
def _unwrap(runner) -> nn.Module:
    model = runner.model
    return model.module if is_model_wrapper(model) else model


def _alpha_layers(model: nn.Module) -> List[Tuple[str, List[str], torch.Tensor]]:
    """``(layer name, op names, softmax(α))`` per architecture parameter."""
    layers = []
    for name, param in model.named_parameters():
        if not name.endswith(ALPHA_MARKER):
            continue
        owner_name = name[:-len(ALPHA_MARKER)].rstrip('.')
        owner = model.get_submodule(owner_name) if owner_name else model
        ops = list(getattr(owner, 'primitives', [f'op{i}' for i in range(param.numel())]))
        if hasattr(owner, 'arch_weights'):
            probs = owner.arch_weights()
        else:
            probs = F.softmax(param.detach(), dim=-1)
        layers.append((owner_name, ops, probs.detach().float().cpu().flatten()))
    return layers


def _arch_matrix(layers: Sequence[Tuple[str, List[str], torch.Tensor]]
                 ) -> Tuple[List[str], List[str], np.ndarray]:
    """Layer names, the union of op names, and a layers x ops matrix (NaN = absent)."""
    union: List[str] = []
    for _, ops, _ in layers:
        union += [op for op in ops if op not in union]
    matrix = np.full((len(layers), len(union)), np.nan, dtype=np.float32)
    for row, (_, ops, probs) in enumerate(layers):
        for op, p in zip(ops, probs.tolist()):
            matrix[row, union.index(op)] = p
    return [n for n, _, _ in layers], union, matrix


def _short_labels(names: Sequence[str]) -> List[str]:
    """Drop the dotted prefix and suffix all names share (keeping one prefix part).

    ``backbone.encoder.blocks.3.attn.qkv`` becomes ``blocks.3``.
    """
    if len(names) < 2:
        return list(names)
    parts = [n.split('.') for n in names]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) - tail - 1 > head and p[-tail - 1] == parts[0][-tail - 1] for p in parts):
        tail += 1
    start = max(head - 1, 0)
    return ['.'.join(p[start:len(p) - tail]) for p in parts]


# Figures ---------------------------------------------------------------------
def plot_heatmap(path: str, matrix: np.ndarray, layers: Sequence[str], ops: Sequence[str],
                 title: str = 'softmax(α)') -> None:
    """Write a layers x ops heatmap of op weights, annotated, argmax outlined."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    num_layers, num_ops = matrix.shape
    fig = Figure(figsize=(2.2 + 0.95 * num_ops, 1.6 + 0.36 * num_layers))
    ax = fig.add_subplot()
    finite = np.isfinite(matrix)
    # The colours span the observed range (weights near 1/num_ops would all
    # look alike on [0, 1]); the annotations give the absolute values.
    low = float(matrix[finite].min()) if finite.any() else 0.
    high = float(matrix[finite].max()) if finite.any() else 1.
    high = max(high, low + 1e-6)
    cmap = matplotlib.colormaps['viridis'].with_extremes(bad='lightgrey')
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=low, vmax=high,
                      aspect='auto')
    for r in range(num_layers):
        row = matrix[r]
        best = int(np.nanargmax(row)) if np.isfinite(row).any() else -1
        for c in range(num_ops):
            if not np.isfinite(row[c]):
                continue
            dark = (row[c] - low) / (high - low) < 0.6
            ax.text(c, r, f'{row[c]:.3f}', ha='center', va='center', fontsize=7,
                    color='white' if dark else 'black',
                    fontweight='bold' if c == best else 'normal')
        if best >= 0:
            ax.add_patch(Rectangle((best - 0.5, r - 0.5), 1, 1, fill=False,
                                   edgecolor='red', linewidth=1.5))
    ax.set_xticks(range(num_ops), labels=list(ops), rotation=40, ha='right', fontsize=8)
    ax.set_yticks(range(num_layers), labels=list(layers), fontsize=8)
    ax.set_xlabel('candidate op')
    ax.set_ylabel('adapted layer')
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_trajectory(path: str, steps: np.ndarray, weights: np.ndarray,
                    layers: Sequence[str], ops: Sequence[str],
                    search_start: Optional[int] = None) -> None:
    """Write op weights over iterations: the layer mean, then one panel per layer.

    Args:
        path (str): Output PNG.
        steps (np.ndarray): ``(P,)`` trained iterations of each point.
        weights (np.ndarray): ``(P, L, O)`` softmax(α), NaN for absent ops.
        layers (Sequence[str]): L layer labels.
        ops (Sequence[str]): O op names.
        search_start (int, optional): Iteration where the search starts,
            drawn as a dashed line.
    """
    from matplotlib.figure import Figure

    panels = [('mean over layers', np.nanmean(weights, axis=1))] if len(layers) > 1 else []
    panels += [(label, weights[:, i]) for i, label in enumerate(layers)]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.2 * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    colors = [f'C{i % 10}' for i in range(len(ops))]
    marker = 'o' if len(steps) < 3 else None
    for ax, (label, values) in zip(axes.flat, panels):
        for j, op in enumerate(ops):
            ax.plot(steps, values[:, j], color=colors[j], marker=marker, markersize=3,
                    linewidth=1.2, label=op)
        if search_start is not None:
            ax.axvline(search_start, color='grey', linestyle='--', linewidth=0.8)
        ax.axhline(1 / len(ops), color='black', linestyle=':', linewidth=0.6)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for index in range(len(panels)):
        # The lowest visible panel of each column carries the x axis.
        if index + ncols >= len(panels):
            ax = axes.flat[index]
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel('iteration', fontsize=8)
    handles, names = axes.flat[0].get_legend_handles_labels()
    height = 2.2 * nrows + 0.8
    fig.legend(handles, names, loc='lower center', ncol=min(len(ops), 4), fontsize=7,
               frameon=False)
    fig.suptitle('softmax(α) over training (dashed: search starts; dotted: uniform)',
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    fig.savefig(path, dpi=100)

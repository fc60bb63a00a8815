"""Figures of the architecture weights: a layers x ops heatmap and trajectories."""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..models.adapters.arch import ArchLayer

HEATMAP_FILE = 'alpha_heatmap.png'
TRAJECTORY_FILE = 'alpha_trajectory.png'


def arch_matrix(layers: Sequence[ArchLayer]) -> Tuple[List[str], np.ndarray]:
    """The union of the layers' op names and their layers x ops softmax(α) (NaN = absent)."""
    union: List[str] = []
    for layer in layers:
        union += [op for op in layer.primitives if op not in union]
    matrix = np.full((len(layers), len(union)), np.nan, dtype=np.float32)
    for row, layer in enumerate(layers):
        for op, p in zip(layer.primitives, layer.weights.tolist()):
            matrix[row, union.index(op)] = p
    return union, matrix


def short_labels(names: Sequence[str]) -> List[str]:
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

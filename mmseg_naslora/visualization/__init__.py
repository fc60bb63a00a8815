from .alpha_figures import (HEATMAP_FILE, TRAJECTORY_FILE, arch_matrix, plot_heatmap,
                            plot_trajectory, short_labels)

__all__ = [
    'HEATMAP_FILE', 'TRAJECTORY_FILE', 'arch_matrix', 'plot_heatmap', 'plot_trajectory',
    'short_labels'
]

from .kvasir import KvasirSEGDataset

__all__ = ['KvasirSEGDataset']

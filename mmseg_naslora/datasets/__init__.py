from .camvid import CamVidDataset
from .kvasir import KvasirSEGDataset

__all__ = ['CamVidDataset', 'KvasirSEGDataset']

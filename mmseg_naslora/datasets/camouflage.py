"""Camouflaged object segmentation benchmarks (binary).

Both are evaluated with S-measure, weighted F-measure, mean E-measure and
MAE (:class:`SODMetric`). Images are JPEG, masks index PNGs (0 background,
1 camouflaged object), as written by ``tools/dataset_converters``.
"""
from mmseg.registry import DATASETS

from .binary import BinarySegDataset

CAMOUFLAGE_METAINFO = dict(
    classes=('background', 'camouflaged'),
    palette=[[0, 0, 0], [255, 255, 255]])


@DATASETS.register_module()
class CAMODataset(BinarySegDataset):
    """CAMO: official splits ``train`` 1000 / ``test`` 250.

    Le et al., "Anabranch Network for Camouflaged Object Segmentation", CVIU
    2019. Written by ``tools/dataset_converters/camo.py``.
    """
    METAINFO = CAMOUFLAGE_METAINFO
    CONVERTER = 'camo.py'


@DATASETS.register_module()
class COD10KDataset(BinarySegDataset):
    """COD10K: camouflaged images of the official splits, 3040 / 2026.

    Fan et al., "Camouflaged Object Detection", CVPR 2020. Written by
    ``tools/dataset_converters/cod10k.py``.
    """
    METAINFO = CAMOUFLAGE_METAINFO
    CONVERTER = 'cod10k.py'

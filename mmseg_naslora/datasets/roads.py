from mmseg.registry import DATASETS

from .binary import BinarySegDataset


@DATASETS.register_module()
class MassachusettsRoadsDataset(BinarySegDataset):
    """Massachusetts Roads: official splits 1108 / 14 / 49 tiles, binary.

    Mnih, "Machine Learning for Aerial Image Labeling", PhD thesis, 2013.
    Written by ``tools/dataset_converters/massachusetts_roads.py`` as PNG
    images (lossless from the TIFF release) and index PNG masks
    (0 background, 1 road). The papers report IoU.
    """
    METAINFO = dict(
        classes=('background', 'road'), palette=[[0, 0, 0], [255, 255, 255]])
    CONVERTER = 'massachusetts_roads.py'

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

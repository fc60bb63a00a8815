"""Trans10K transparent object segmentation, v1 (3 classes) and v2 (12).

Both are multi-class with background as class 0 (so ``reduce_zero_label``
is False) and official splits ``train`` 5000 / ``val`` 1000 / ``test``
4428, written by ``tools/dataset_converters/trans10k.py``. The papers report
mIoU (mmseg's ``IoUMetric``).
"""
from typing import List

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .binary import check_converted_layout


class _Trans10KDataset(BaseSegDataset):
    """JPEG images, index PNG masks, background kept as class 0."""

    def __init__(self,
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False,
                 **kwargs) -> None:
        if reduce_zero_label:
            raise ValueError(
                f'{type(self).__name__}: background is class 0 of Trans10K, '
                'so reduce_zero_label must be False.')
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=False,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        check_converted_layout(self, 'trans10k.py')
        return super().load_data_list()


@DATASETS.register_module()
class Trans10KV1Dataset(_Trans10KDataset):
    """Trans10K v1: background, things, stuff.

    Xie et al., "Segmenting Transparent Objects in the Wild", ECCV 2020.
    Class order follows the authors' TransLab loader. Their colour masks map
    by RGB mean (0, 85, 255); the palette here is for display only.
    The converter also writes ``splits/{val,test}_{easy,hard}.txt`` for the
    easy/hard subsets (pass one as ``ann_file``).
    """
    METAINFO = dict(
        classes=('background', 'things', 'stuff'),
        palette=[[0, 0, 0], [255, 0, 0], [255, 255, 255]])


@DATASETS.register_module()
class Trans10KV2Dataset(_Trans10KDataset):
    """Trans10K v2: background + 11 fine transparent object classes.

    Xie et al., "Segmenting Transparent Object in the Wild with Transformer"
    (Trans2Seg), IJCAI 2021. Class order follows the authors' Trans2Seg
    loader ('Glass Bow' there is read as 'glass bowl'). Trans2Seg colours
    predictions with the PASCAL VOC palette, whose first 12 entries are used.
    """
    METAINFO = dict(
        classes=('background', 'shelf', 'jar or tank', 'freezer', 'window',
                 'glass door', 'eyeglass', 'cup', 'floor glass', 'glass bowl',
                 'water bottle', 'storage box'),
        palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                 [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
                 [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0]])

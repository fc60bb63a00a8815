from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS


@DATASETS.register_module()
class KvasirSEGDataset(BaseSegDataset):
    """Kvasir-SEG colonoscopy polyps (Jha et al., MMM 2020), binary.

    Layout: ``img_dir/{split}/*.jpg`` and ``ann_dir/{split}/*.png`` with index
    masks (0 background, 1 polyp, 255 ignore).
    """
    METAINFO = dict(classes=('background', 'polyp'), palette=[[0, 0, 0], [255, 255, 255]])

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.png', **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

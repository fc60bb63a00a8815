from mmseg.registry import DATASETS

from .binary import BinarySegDataset


@DATASETS.register_module()
class KvasirSEGDataset(BinarySegDataset):
    """Kvasir-SEG colonoscopy polyps (Jha et al., MMM 2020), binary.

    Layout, as written by ``tools/dataset_converters/kvasir.py``:
    ``img_dir/{split}/*.jpg`` and ``ann_dir/{split}/*.png`` with index masks
    (0 background, 1 polyp, 255 ignore).
    """
    METAINFO = dict(classes=('background', 'polyp'), palette=[[0, 0, 0], [255, 255, 255]])
    CONVERTER = 'kvasir.py'

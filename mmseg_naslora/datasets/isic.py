from mmseg.registry import DATASETS

from .binary import BinarySegDataset


@DATASETS.register_module()
class ISIC2017Dataset(BinarySegDataset):
    """ISIC 2017 skin lesion segmentation, Part 1 (binary).

    Codella et al., "Skin Lesion Analysis Toward Melanoma Detection: A
    Challenge at ISBI 2017", ISBI 2018. Official splits train 2000 / val 150
    / test 600, written by ``tools/dataset_converters/isic2017.py`` as
    ``img_dir/{split}/ISIC_xxxxxxx.jpg`` and ``ann_dir/{split}/*.png``
    (0 background, 1 lesion). The papers report foreground Jaccard and Dice.
    """
    METAINFO = dict(
        classes=('background', 'lesion'),
        palette=[[0, 0, 0], [255, 255, 255]])
    CONVERTER = 'isic2017.py'

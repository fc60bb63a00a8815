from mmseg.registry import DATASETS

from .binary import BinarySegDataset


@DATASETS.register_module()
class LeafDiseaseDataset(BinarySegDataset):
    """Leaf disease segmentation (binary), AutoGluon's train/val/test split.

    The agriculture benchmark of Conv-LoRA (Zhong et al., ICLR 2024), written
    by ``tools/dataset_converters/leaf_disease.py`` as JPEG images and index
    PNG masks (0 background, 1 diseased area). The papers report IoU.
    """
    METAINFO = dict(
        classes=('background', 'disease'),
        palette=[[0, 0, 0], [255, 255, 255]])
    CONVERTER = 'leaf_disease.py'

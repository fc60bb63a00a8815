from mmseg.registry import DATASETS

from .binary import BinarySegDataset


@DATASETS.register_module()
class SBUShadowDataset(BinarySegDataset):
    """SBU Shadow: official splits ``train`` 4089 / ``test`` 638, binary.

    Vicente et al., "Large-scale Training of Shadow Detectors with Noisily-
    Annotated Shadow Examples", ECCV 2016. Written by
    ``tools/dataset_converters/sbu.py`` as JPEG images and index PNG masks
    (0 non-shadow, 1 shadow). The papers report the balanced error rate
    (:class:`BERMetric`).
    """
    METAINFO = dict(
        classes=('background', 'shadow'),
        palette=[[0, 0, 0], [255, 255, 255]])
    CONVERTER = 'sbu.py'

"""The polyp benchmarks besides Kvasir-SEG (see :mod:`.kvasir`).

The protocol of PraNet (Fan et al., "PraNet: Parallel Reverse Attention
Network for Polyp Segmentation", MICCAI 2020) trains on 900 Kvasir-SEG + 550
CVC-ClinicDB images and tests on Kvasir-SEG (100), CVC-ClinicDB (62) and the
unseen CVC-ColonDB, ETIS-LaribPolypDB and CVC-300. All are binary (0
background, 1 polyp) with PNG images as written by
``tools/dataset_converters``; the papers report S-measure, weighted
F-measure, mean E-measure and MAE (:class:`SODMetric`) and Dice/IoU.
"""
from mmseg.registry import DATASETS

from .binary import BinarySegDataset

POLYP_METAINFO = dict(
    classes=('background', 'polyp'), palette=[[0, 0, 0], [255, 255, 255]])


class _PNGPolypDataset(BinarySegDataset):
    """Polyp set stored as ``img_dir/{split}/*.png``, ``ann_dir/*.png``."""
    METAINFO = POLYP_METAINFO

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


@DATASETS.register_module()
class CVCClinicDBDataset(_PNGPolypDataset):
    """CVC-ClinicDB colonoscopy polyps (612 frames), binary.

    Bernal et al., "WM-DOVA maps for accurate polyp highlighting in
    colonoscopy", CMIG 2015. PraNet's split: ``train`` 550 / ``test`` 62,
    written by ``tools/dataset_converters/cvc_clinicdb.py``.
    """
    CONVERTER = 'cvc_clinicdb.py'


@DATASETS.register_module()
class CVCColonDBDataset(_PNGPolypDataset):
    """CVC-ColonDB (380 frames), a test-only polyp set; split ``test``.

    Tajbakhsh et al., "Automated polyp detection in colonoscopy videos using
    shape and context information", IEEE TMI 2015. Written by
    ``tools/dataset_converters/cvc_colondb.py``.
    """
    CONVERTER = 'cvc_colondb.py'


@DATASETS.register_module()
class ETISLaribDataset(_PNGPolypDataset):
    """ETIS-LaribPolypDB (196 frames), a test-only polyp set; split ``test``.

    Silva et al., "Toward embedded detection of polyps in WCE images for
    early diagnosis of colorectal cancer", IJCARS 2014. Written by
    ``tools/dataset_converters/etis.py``.
    """
    CONVERTER = 'etis.py'


@DATASETS.register_module()
class CVC300Dataset(_PNGPolypDataset):
    """CVC-300 (60 frames, EndoScene's test part), test-only; split ``test``.

    Vazquez et al., "A benchmark for endoluminal scene segmentation of
    colonoscopy images", JHE 2017. Written by
    ``tools/dataset_converters/cvc300.py``.
    """
    CONVERTER = 'cvc300.py'

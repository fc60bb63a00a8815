from .binary import BinarySegDataset
from .camouflage import CAMODataset, COD10KDataset
from .camvid import CamVidDataset
from .isic import ISIC2017Dataset
from .kvasir import KvasirSEGDataset
from .leaf import LeafDiseaseDataset
from .polyp import CVC300Dataset, CVCClinicDBDataset, CVCColonDBDataset, ETISLaribDataset
from .roads import MassachusettsRoadsDataset
from .shadow import SBUShadowDataset
from .trans10k import Trans10KV1Dataset, Trans10KV2Dataset

__all__ = [
    'BinarySegDataset', 'CAMODataset', 'COD10KDataset', 'CamVidDataset', 'ISIC2017Dataset',
    'KvasirSEGDataset', 'LeafDiseaseDataset', 'CVC300Dataset', 'CVCClinicDBDataset',
    'CVCColonDBDataset', 'ETISLaribDataset', 'MassachusettsRoadsDataset', 'SBUShadowDataset',
    'Trans10KV1Dataset', 'Trans10KV2Dataset'
]

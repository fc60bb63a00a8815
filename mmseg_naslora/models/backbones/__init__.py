from .adapted_backbone import AdaptedBackbone
from .sam2_hiera import SAM2Hiera
from .sam_tinyvit import SAMTinyViT
from .sam_vit import SAMViT

__all__ = ['AdaptedBackbone', 'SAM2Hiera', 'SAMTinyViT', 'SAMViT']

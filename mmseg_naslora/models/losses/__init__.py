from .balanced_bce_loss import BalancedBCELoss
from .focal_tversky_loss import FocalTverskyLoss
from .mask_set_loss import MaskSetLoss
from .soft_dice_loss import SoftDiceLoss
from .structure_loss import StructureLoss

__all__ = ['BalancedBCELoss', 'FocalTverskyLoss', 'MaskSetLoss', 'SoftDiceLoss', 'StructureLoss']

from .focal_tversky_loss import FocalTverskyLoss
from .soft_dice_loss import SoftDiceLoss
from .structure_loss import StructureLoss

__all__ = ['FocalTverskyLoss', 'SoftDiceLoss', 'StructureLoss']

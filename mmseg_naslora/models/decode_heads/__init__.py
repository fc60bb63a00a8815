from .sam2_mask_decoder_head import SAM2MaskDecoderHead, SAM2MaskSetHead
from .sam_mask_decoder_head import SAMMaskDecoderHead
from .sam_mask_set_head import SAMMaskSetHead

__all__ = ['SAM2MaskDecoderHead', 'SAM2MaskSetHead', 'SAMMaskDecoderHead', 'SAMMaskSetHead']

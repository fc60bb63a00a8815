from .nas_ddp_wrapper import NASDistributedDataParallel
from .nas_encoder_decoder import NASEncoderDecoder

__all__ = ['NASDistributedDataParallel', 'NASEncoderDecoder']

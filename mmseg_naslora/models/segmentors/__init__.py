from .adapter_encoder_decoder import AdapterEncoderDecoder
from .nas_ddp_wrapper import NASDistributedDataParallel
from .nas_encoder_decoder import NASEncoderDecoder, NASStepPlan
from .prob_tta_model import ProbTTAModel

__all__ = [
    'AdapterEncoderDecoder', 'NASDistributedDataParallel', 'NASEncoderDecoder', 'NASStepPlan',
    'ProbTTAModel'
]

"""Small helpers on models."""
import torch.nn as nn
from mmengine.model import is_model_wrapper


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a distributed wrapper (DDP, FSDP...), or ``model`` itself."""
    return model.module if is_model_wrapper(model) else model

"""DistributedDataParallel for segmentors with their own training step."""
from typing import Dict, Union

import torch
import torch.nn as nn
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmseg.registry import MODEL_WRAPPERS

from .nas_encoder_decoder import NASEncoderDecoder


@MODEL_WRAPPERS.register_module()
class NASDistributedDataParallel(MMDistributedDataParallel):
    """DDP whose ``train_step`` is :meth:`NASEncoderDecoder.train_step`.

    mmengine's :class:`MMDistributedDataParallel` runs one forward and one
    weight update, so it cannot drive an ``OptimWrapperDict``. This wrapper
    delegates to the module's alternating step and passes itself along:
    every forward of both steps goes through ``DistributedDataParallel``,
    whose reducer then all-reduces the gradients of that step (the plain
    ``self.module.train_step(...)`` would bypass DDP and let the ranks
    drift apart). The same idea as mmrazor's ``DartsDDP``, without copying
    the step.

    DDP subtleties handled here:

    * A step uses only part of the parameters (α is frozen in stage 1 and
      in the weight step, the weights in the α step), so the reducer must
      look for unused parameters: ``find_unused_parameters`` defaults to
      True. A parameter unused on every rank keeps its gradient untouched
      (None), so the steps stay isolated. ``static_graph`` cannot be used,
      since the graph changes between steps and stages.
    * On CPU (gloo), where DDP refuses ``device_ids``, the
      ``device_ids=[LOCAL_RANK]`` that the runner always passes is dropped.

    Configs use it through the mmseg scope, which mmengine's runner resolves::

        model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

    Args:
        module (nn.Module): The model, usually a :class:`NASEncoderDecoder`;
            any other model trains as under :class:`MMDistributedDataParallel`.
        find_unused_parameters (bool): Passed to DDP. Defaults to True.
        detect_anomalous_params (bool): mmengine's debugging option.
            Defaults to False.
        **kwargs: Other ``DistributedDataParallel`` arguments.
    """

    def __init__(self,
                 module: nn.Module,
                 find_unused_parameters: bool = True,
                 detect_anomalous_params: bool = False,
                 **kwargs) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        if on_cpu and kwargs.get('device_ids') is not None:
            kwargs['device_ids'] = None
        super().__init__(
            module=module,
            detect_anomalous_params=detect_anomalous_params,
            find_unused_parameters=find_unused_parameters,
            **kwargs)

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: Union[OptimWrapper, OptimWrapperDict]
                   ) -> Dict[str, torch.Tensor]:
        """Run the module's training step with forwards through this wrapper."""
        if isinstance(self.module, NASEncoderDecoder):
            return self.module.train_step(data, optim_wrapper, wrapper=self)
        return super().train_step(data, optim_wrapper)

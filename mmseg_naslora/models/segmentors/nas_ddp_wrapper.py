"""DistributedDataParallel for segmentors with their own training step."""
from typing import Dict, Optional, Union

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
    delegates to the module's NAS step and passes itself along: every
    forward (one in the joint step, two in the alternating one) goes through
    ``DistributedDataParallel``,
    whose reducer then all-reduces the gradients of that step (the plain
    ``self.module.train_step(...)`` would bypass DDP and let the ranks
    drift apart). The same idea as mmrazor's ``DartsDDP``, without copying
    the step.

    DDP subtleties handled here:

    * The joint step keeps every trainable parameter, α included, in every
      backward, so one all-reduce per iteration covers all gradients and the
      reducer need not look for unused parameters. The alternating step
      freezes one group in each of its steps, so it needs
      ``find_unused_parameters=True`` (a parameter unused on every rank then
      keeps its gradient untouched, None, and the steps stay isolated).
      ``find_unused_parameters=None`` picks False for a joint
      :class:`NASEncoderDecoder` and True for anything else.
    * On CPU (gloo), where DDP refuses ``device_ids``, the
      ``device_ids=[LOCAL_RANK]`` that the runner always passes is dropped.

    Configs use it through the mmseg scope, which mmengine's runner resolves::

        model_wrapper_cfg = dict(type='mmseg.NASDistributedDataParallel')

    Args:
        module (nn.Module): The model, usually a :class:`NASEncoderDecoder`;
            any other model trains as under :class:`MMDistributedDataParallel`.
        find_unused_parameters (bool, optional): Passed to DDP; None picks it
            from the module (see above). Defaults to None.
        detect_anomalous_params (bool): mmengine's debugging option.
            Defaults to False.
        **kwargs: Other ``DistributedDataParallel`` arguments.
    """

    def __init__(self,
                 module: nn.Module,
                 find_unused_parameters: Optional[bool] = None,
                 detect_anomalous_params: bool = False,
                 **kwargs) -> None:
        if find_unused_parameters is None:
            find_unused_parameters = not (isinstance(module, NASEncoderDecoder)
                                          and module.search_step == 'joint')
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

"""An encoder-decoder that adds its adapters' auxiliary losses."""
import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import SampleList

from ..adapters.conv_lora import collect_aux_losses


@MODELS.register_module()
class AdapterEncoderDecoder(EncoderDecoder):
    """:class:`EncoderDecoder` plus the adapters' auxiliary losses.

    Conv-LoRA's mixture-of-experts gate has a balance loss (``loss_moe``)
    that each adapter stores during the forward; a plain ``EncoderDecoder``
    never adds it, so the gate would not be balanced. This segmentor reads
    (and clears) them inside the forward, so that DDP sees the gate
    parameters in the graph of the forward's output.

    Args:
        aux_loss (bool): Add the adapters' auxiliary losses as ``loss_moe``.
            Defaults to True.
        **kwargs: Arguments of :class:`EncoderDecoder` (``backbone``,
            ``decode_head``, ``data_preprocessor``...).
    """

    def __init__(self, *args, aux_loss: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.aux_loss = bool(aux_loss)

    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> dict:
        """:meth:`EncoderDecoder.loss` plus ``loss_moe`` from the adapters."""
        losses = super().loss(inputs, data_samples)
        # Always read (and reset) so no stored loss keeps its graph alive.
        aux = collect_aux_losses(self)
        if self.aux_loss and aux is not None:
            losses['loss_moe'] = aux
        return losses

"""SAM2's mask decoder as a prompt-free mmseg decode head, with decoder LoRA."""
from typing import List, Optional, Sequence, Tuple

import torch
from mmseg.registry import MODELS
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer

from ..adapters.inject import inject_adapters, iter_adapters
from .sam_mask_decoder_head import SET_HEADS, SAMMaskDecoderHead
from .sam_mask_set_head import SAMMaskSetHead

# Every attention linear of SAM2's two-way transformer: self_attn,
# cross_attn_token_to_image, cross_attn_image_to_token of each layer, and
# final_attn_token_to_image.
DECODER_ADAPTER_TARGET = r'(^|\.)(q_proj|k_proj|v_proj|out_proj)$'


@MODELS.register_module()
class SAM2MaskDecoderHead(SAMMaskDecoderHead):
    """Prompt-free SAM2 mask decoder for semantic segmentation.

    Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024. The
    binary and ``'per_class'`` modes, the losses and inference are
    :class:`SAMMaskDecoderHead`'s (``mode='set'`` builds :class:`SAM2MaskSetHead`,
    :class:`SAMMaskSetHead` on this decoder); this class swaps in the ``sam2`` package's
    prompt encoder and mask decoder (built as ``SAM2Base._build_sam_heads``
    builds them) and their differences:

    - the leading output tokens are SAM2's object-score token (with
      ``pred_obj_scores``) and the IoU token; the object-score and IoU heads
      are frozen and unused (masks are not gated by the object score, as in
      ``SAM2ImagePredictor``);
    - with ``use_high_res_features`` the decoder projects the stride-4 and
      stride-8 backbone features with its ``conv_s0``/``conv_s1`` and adds them
      inside its upscaling path. It therefore reads ``inputs[0]`` (stride 4),
      ``inputs[1]`` (stride 8) and the embedding ``inputs[in_index]``
      (stride 16), the outputs of ``SAM2Hiera``;
    - the head always uses the single-mask token (SAM2's test-time
      ``dynamic_multimask_via_stability`` fallback is a click heuristic);
    - official weights are ``sam_prompt_encoder.*`` and ``sam_mask_decoder.*``.

    Decoder LoRA (SAM2LoRA; Mandal et al., "SAM2LoRA: Composite Loss-Guided,
    Parameter-Efficient Finetuning of SAM2 for Retinal Fundus Segmentation",
    2025): ``decoder_adapter`` is injected into every ``q_proj``, ``k_proj``,
    ``v_proj`` and ``out_proj`` of the two-way transformer (4 per attention,
    3 attentions per layer plus the final token-to-image attention: 28
    adapters at depth 2). Their rank and lora_alpha are independent of the
    encoder's. Only token-wise adapters (``LoRA``) are accepted: the
    decoder's attention inputs include the output tokens, which form no grid.

    Trainable parts: the prompt encoder, the IoU head and the object-score
    head are always frozen. With ``freeze_decoder`` every pretrained decoder
    weight is frozen too and only the decoder adapters (and, in the
    multi-class modes, the new class tokens, classifier and hypernetworks)
    train, as in the SAM2LoRA reference, which freezes all of SAM2. Without
    it the decoder trains as in :class:`SAMMaskDecoderHead`.

    Args:
        use_high_res_features (bool): Fuse the stride-4/8 features (SAM2's
            ``use_high_res_features_in_sam``; True in all official configs).
            Defaults to True.
        pred_obj_scores (bool): Build the object-score token and head (True
            in all official configs, needed to load them). Defaults to True.
        pred_obj_scores_mlp (bool): The object-score head is an MLP.
            Defaults to True.
        iou_prediction_use_sigmoid (bool): SAM2's IoU head option (no effect
            on masks). Defaults to True.
        decoder_adapter (dict, optional): Adapter config for the transformer's
            attention linears, e.g. ``dict(type='LoRA', rank=64, lora_alpha=128,
            dropout=0.1)``. None adds none.
        freeze_decoder (bool, optional): Freeze the pretrained decoder
            weights. None (default) freezes them exactly when
            ``decoder_adapter`` is given.
        **kwargs: :class:`SAMMaskDecoderHead` arguments (``num_classes``,
            ``out_channels``, ``mode``, ``checkpoint``, ``loss_decode``...);
            ``checkpoint`` is an official SAM 2 / SAM 2.1 file.
    """

    checkpoint_prefixes = dict(prompt_encoder='sam_prompt_encoder.',
                               mask_decoder='sam_mask_decoder.')
    sam_modules = (PromptEncoder, MaskDecoder, TwoWayTransformer)  # sam2's, as SAM2Base builds

    def __init__(self,
                 use_high_res_features: bool = True,
                 pred_obj_scores: bool = True,
                 pred_obj_scores_mlp: bool = True,
                 iou_prediction_use_sigmoid: bool = True,
                 decoder_adapter: Optional[dict] = None,
                 freeze_decoder: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(
            mask_decoder_args=dict(use_high_res_features=use_high_res_features,
                                   pred_obj_scores=pred_obj_scores,
                                   pred_obj_scores_mlp=pred_obj_scores_mlp,
                                   iou_prediction_use_sigmoid=iou_prediction_use_sigmoid),
            **kwargs)
        dec = self.mask_decoder
        if pred_obj_scores:
            dec.pred_obj_score_head.requires_grad_(False)
        self.decoder_adapted_layers: List[str] = []
        if decoder_adapter is not None:
            self.decoder_adapted_layers = inject_adapters(
                dec.transformer, decoder_adapter, target=DECODER_ADAPTER_TARGET)
            spatial = sorted({type(a).__name__ for _, a in iter_adapters(dec) if not a.mergeable})
            if spatial:
                raise ValueError(
                    f'decoder_adapter {spatial} mixes neighbouring tokens, but the SAM2 '
                    'decoder attends over output tokens that form no grid; use a '
                    "token-wise adapter, e.g. dict(type='LoRA', rank=64, lora_alpha=128, "
                    'dropout=0.1).')
        self.freeze_decoder = (decoder_adapter is not None
                               if freeze_decoder is None else freeze_decoder)
        if self.freeze_decoder:
            self._freeze_pretrained_decoder()

    def _freeze_pretrained_decoder(self) -> None:
        """Freeze every mask-decoder parameter that no adapter owns."""
        owned = set()
        for name, adapter in iter_adapters(self.mask_decoder):
            owned |= {f'{name}.{n}' for n, _ in adapter.named_parameters()
                      if not n.startswith('base_layer.')}
        for name, param in self.mask_decoder.named_parameters():
            if name not in owned:
                param.requires_grad_(False)

    def _leading_tokens(self) -> torch.Tensor:
        dec = self.mask_decoder
        if dec.pred_obj_scores:
            return torch.cat([dec.obj_score_token.weight, dec.iou_token.weight])
        return dec.iou_token.weight

    def _upscale(self, src: torch.Tensor,
                 high_res_features: Optional[List[torch.Tensor]]) -> torch.Tensor:
        dec = self.mask_decoder
        if not dec.use_high_res_features:
            return dec.output_upscaling(src)
        # sam2's MaskDecoder.predict_masks: the projected stride-8 and
        # stride-4 features join after each transposed conv.
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        feat_s0, feat_s1 = high_res_features
        x = act1(ln1(dc1(src) + feat_s1))
        return act2(dc2(x) + feat_s0)

    def _decoder_inputs(
            self, inputs: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
        embedding = self._transform_inputs(inputs)
        dec = self.mask_decoder
        if not dec.use_high_res_features:
            return embedding, None
        if len(inputs) < 3:
            raise ValueError(
                f'{type(self).__name__} with use_high_res_features needs the stride-4 '
                f'and stride-8 features as inputs[0] and inputs[1] besides the '
                f'embedding, got {len(inputs)} input(s); use the SAM2Hiera backbone or '
                'set use_high_res_features=False.')
        h, w = embedding.shape[-2:]
        for level, factor in ((0, 4), (1, 2)):
            size = tuple(inputs[level].shape[-2:])
            if size != (factor * h, factor * w):
                raise ValueError(f'inputs[{level}] is {size}, expected {factor}x the '
                                 f'embedding ({factor * h}, {factor * w}).')
        return embedding, [dec.conv_s0(inputs[0]), dec.conv_s1(inputs[1])]


@MODELS.register_module()
class SAM2MaskSetHead(SAMMaskSetHead, SAM2MaskDecoderHead):
    """:class:`SAMMaskSetHead` on SAM2's decoder (:class:`SAM2MaskDecoderHead`'s options).

    ``SAM2MaskDecoderHead(mode='set')`` builds this class.
    """


SET_HEADS[SAM2MaskDecoderHead] = SAM2MaskSetHead

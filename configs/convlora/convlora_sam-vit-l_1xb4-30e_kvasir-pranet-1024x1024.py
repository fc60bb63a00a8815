# Conv-LoRA (r = 3, 8 experts; loss_moe added) on SAM ViT-L (24 blocks), Kvasir-SEG
# (PraNet's split) at 1024x1024: 30 epochs.
_base_ = ['./convlora_sam-vit-b_1xb4-30e_kvasir-pranet-1024x1024.py']
sam_checkpoint = 'checkpoints/sam_vit_l_0b3195.pth'
model = dict(
    backbone=dict(arch='l', checkpoint=sam_checkpoint),
    decode_head=dict(checkpoint=sam_checkpoint))

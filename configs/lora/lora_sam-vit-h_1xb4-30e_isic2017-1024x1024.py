# LoRA (r = 3) on SAM ViT-H (32 blocks), ISIC 2017 at 1024x1024: 30 epochs.
# Activation checkpointing keeps batch 4 within one 80 GB GPU.
_base_ = ['./lora_sam-vit-b_1xb4-30e_isic2017-1024x1024.py']
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
model = dict(
    backbone=dict(arch='h', checkpoint=sam_checkpoint, with_cp=True),
    decode_head=dict(checkpoint=sam_checkpoint))

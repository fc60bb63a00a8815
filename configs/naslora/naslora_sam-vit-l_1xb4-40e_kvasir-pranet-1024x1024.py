# NAS-LoRA (r = 3, DARTS ops) on SAM ViT-L (24 blocks), Kvasir-SEG (PraNet's split) at
# 1024x1024: 40 epochs, weights alone for T_B = 10 epochs.
_base_ = ['./naslora_sam-vit-b_1xb4-40e_kvasir-pranet-1024x1024.py']
sam_checkpoint = 'checkpoints/sam_vit_l_0b3195.pth'
model = dict(
    backbone=dict(arch='l', checkpoint=sam_checkpoint),
    decode_head=dict(checkpoint=sam_checkpoint))

# NAS-LoRA (r = 3, DARTS ops) on SAM ViT-L (24 blocks), CAMO at 1024x1024: 28 epochs,
# weights alone for T_B = 7 epochs.
_base_ = ['./naslora_sam-vit-b_1xb4-28e_camo-1024x1024.py']
sam_checkpoint = 'checkpoints/sam_vit_l_0b3195.pth'
model = dict(
    backbone=dict(arch='l', checkpoint=sam_checkpoint),
    decode_head=dict(checkpoint=sam_checkpoint))

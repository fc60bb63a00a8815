# NAS-LoRA (r = 3, DARTS ops) on SAM ViT-H (32 blocks), CAMO at 1024x1024: 28 epochs,
# weights alone for T_B = 7 epochs.
# Activation checkpointing keeps batch 4 within one 80 GB GPU.
_base_ = ['./naslora_sam-vit-b_1xb4-28e_camo-1024x1024.py']
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'
model = dict(
    backbone=dict(arch='h', checkpoint=sam_checkpoint, with_cp=True),
    decode_head=dict(checkpoint=sam_checkpoint))

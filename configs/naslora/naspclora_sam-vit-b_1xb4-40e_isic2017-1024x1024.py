# NAS-PC-LoRA: as NAS-LoRA, but only ceil(2/3 * r) = 2 of the r = 3 bottleneck
# channels go through the mixed op (PC-DARTS partial channels + shuffle).
_base_ = ['./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']
model = dict(backbone=dict(adapter=dict(type='NASPCLoRA', pc_ratio=2 / 3)))

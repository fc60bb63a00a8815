# SAM ViT-B + NAS-LoRA (r = 3) on ISIC 2017 at 1024x1024: 40 epochs with
# T_B = 10 weights-only epochs. Canonical name:
# configs/naslora/naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py
_base_ = ['./naslora/naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']

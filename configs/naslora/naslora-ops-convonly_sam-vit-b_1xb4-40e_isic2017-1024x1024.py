# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py with the candidate set 'convonly': only
# convolutions: DARTS' four separable/dilated convs.
_base_ = ['./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5'])))

# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py with the candidate set 'plus': DARTS' eight
# plus a 7x7 separable conv (a wider receptive field) and a dense 1x1 conv (channel mixing without
# spatial mixing).
_base_ = ['./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5',
                'sep_conv_7x7', 'conv_1x1'])))

# NAS-LoRA for an exported model: the cell of ./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py
# with op_variant='linear_bn' (linear ops + BN(affine=False), no ReLU) and without max-pool,
# so the search stays meaningful and `tools/export.py --mode collapse` turns every searched
# cell into one 9x9 convolution plus a bias, exactly (docs/nas_lora.md, "Which op variant").
_base_ = ['./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']
model = dict(backbone=dict(adapter=dict(
    _delete_=True, type='NASLoRA', rank=3, lora_alpha=32, op_variant='linear_bn',
    primitives=['none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                'dil_conv_3x3', 'dil_conv_5x5'])))

# NAS-LoRA for an exported model, on the CPU: ./naslora_litemedsam_1xb4-150_kvasir-128x128.py
# with the collapsible cell (op_variant='linear_bn', no max-pool; docs/nas_lora.md). Export with
#   python tools/export.py THIS_CONFIG work_dirs/.../iter_150.pth --mode collapse --out OUT
_base_ = ['./naslora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(backbone=dict(adapter=dict(
    _delete_=True, type='NASLoRA', rank=3, lora_alpha=32, op_variant='linear_bn',
    primitives=['none', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                'dil_conv_3x3', 'dil_conv_5x5'])))

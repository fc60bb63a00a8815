# NAS-PC-LoRA: 2/3 of the bottleneck channels go through the mixed op.
_base_ = ['./naslora_litemedsam_1xb4-2k_kvasir-256x256.py']
model = dict(backbone=dict(adapter=dict(type='NASPCLoRA', pc_ratio=2 / 3)))

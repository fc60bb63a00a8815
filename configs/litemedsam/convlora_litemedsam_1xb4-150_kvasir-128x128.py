# Conv-LoRA: its MoE balance loss is added by AdapterEncoderDecoder as `loss_moe`.
_base_ = ['./lora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(type='AdapterEncoderDecoder',
             backbone=dict(adapter=dict(type='ConvLoRA', rank=3, lora_alpha=32)))

# Conv-LoRA: its MoE balance loss is added by AdapterEncoderDecoder as `loss_moe`.
_base_ = ['./lora_litemedsam_1xb4-2k_kvasir-256x256.py']
model = dict(type='AdapterEncoderDecoder',
             backbone=dict(adapter=dict(type='ConvLoRA', rank=3, lora_alpha=32)))

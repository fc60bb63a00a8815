# Baseline: the frozen LiteMedSAM encoder without adapters; only the mask decoder trains.
_base_ = ['./lora_litemedsam_1xb4-2k_kvasir-256x256.py']
model = dict(backbone=dict(adapter=None))

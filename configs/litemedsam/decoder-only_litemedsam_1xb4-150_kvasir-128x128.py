# Baseline: the frozen LiteMedSAM encoder without adapters; only the mask decoder trains.
_base_ = ['./lora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(backbone=dict(adapter=None))

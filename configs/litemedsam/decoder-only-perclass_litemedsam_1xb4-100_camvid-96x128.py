# Baseline: the frozen LiteMedSAM encoder without adapters; only the per-class mask decoder
# trains (same data, crops and schedule as the LoRA run).
_base_ = ['./lora-perclass_litemedsam_1xb4-100_camvid-96x128.py']
model = dict(backbone=dict(adapter=None))

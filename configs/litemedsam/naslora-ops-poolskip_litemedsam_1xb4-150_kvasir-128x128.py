# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_litemedsam_1xb4-150_kvasir-128x128.py with the candidate set 'poolskip': only pooling
# and skip (no zero op: every candidate contributes).
_base_ = ['./naslora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['max_pool_3x3', 'avg_pool_3x3', 'skip_connect'])))

# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py with the candidate set 'poolskip': only pooling
# and skip (no zero op: every candidate contributes).
_base_ = ['./naslora_sam-vit-b_1xb4-40e_isic2017-1024x1024.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['max_pool_3x3', 'avg_pool_3x3', 'skip_connect'])))

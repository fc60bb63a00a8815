# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_litemedsam_1xb4-150_kvasir-128x128.py with the candidate set 'noconv': no convolutions:
# DARTS' eight without the four convs.
_base_ = ['./naslora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect'])))

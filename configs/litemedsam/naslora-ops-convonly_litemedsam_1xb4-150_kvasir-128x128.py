# Op-set ablation (docs/nas_lora.md, "Which ops to search"):
# naslora_litemedsam_1xb4-150_kvasir-128x128.py with the candidate set 'convonly': only
# convolutions: DARTS' four separable/dilated convs.
_base_ = ['./naslora_litemedsam_1xb4-150_kvasir-128x128.py']
model = dict(backbone=dict(adapter=dict(
    primitives=['sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5'])))

# SAM ViT-B + LoRA (r = 3) with mmseg's FCNHead directly on SAM's 1/16 map, on
# ADE20K with mmseg's own dataset, runtime and 80k schedule (via `mmseg::`).
_base_ = ['./lora_sam-vit-b-upernet_1xb4-80k_ade20k-512x512.py']
model = dict(
    neck=None,
    decode_head=dict(
        _delete_=True,
        type='FCNHead',
        in_channels=256,
        channels=256,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)

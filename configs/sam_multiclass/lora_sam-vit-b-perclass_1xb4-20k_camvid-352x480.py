# Multi-class SAM decoder in SAMed's per-class mode (one token and hypernetwork per class,
# CE + Dice on the K mask logits) with LoRA on CamVid's 11 classes.
_base_ = ['./lora_sam-vit-b-set_1xb4-20k_camvid-352x480.py']
model = dict(
    decode_head=dict(
        type='SAMMaskDecoderHead',
        mode='per_class',
        set_loss=None,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
            dict(type='DiceLoss', loss_weight=1.0)
        ]))

# SAM ViT-B encoder (frozen) with LoRA on every qkv, and the prompt-free SAM
# mask decoder as a binary head. Put the official checkpoint at
# checkpoints/sam_vit_b_01ec64.pth (see README) or override `sam_checkpoint`.
sam_checkpoint = 'checkpoints/sam_vit_b_01ec64.pth'
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    test_cfg=dict(size_divisor=16))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAMViT',
        arch='b',
        img_size=1024,
        checkpoint=sam_checkpoint,
        adapter=dict(type='LoRA', rank=3, lora_alpha=32)),
    decode_head=dict(
        type='SAMMaskDecoderHead',
        in_channels=256,
        channels=256,
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        checkpoint=sam_checkpoint,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0,
                         avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

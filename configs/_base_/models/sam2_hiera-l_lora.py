# SAM2LoRA: SAM 2.1 Hiera-L image encoder (frozen) with LoRA on every trunk
# qkv, and the prompt-free SAM2 mask decoder (frozen) with LoRA on every
# attention linear of its two-way transformer; lora_alpha = 2 * rank, dropout 0.1;
# BCE + SoftDice + FocalTversky with equal weights. Put the official
# checkpoint at checkpoints/sam2.1_hiera_large.pt (see docs/sam2lora.md) or
# override both `checkpoint`s.
sam2_checkpoint = 'checkpoints/sam2.1_hiera_large.pt'
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    test_cfg=dict(size_divisor=32))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAM2Hiera',
        arch='hiera-l',
        checkpoint=sam2_checkpoint,
        adapter=dict(type='LoRA', rank=64, lora_alpha=128, dropout=0.1)),
    decode_head=dict(
        type='SAM2MaskDecoderHead',
        in_channels=256,
        channels=256,
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        checkpoint=sam2_checkpoint,
        decoder_adapter=dict(type='LoRA', rank=64, lora_alpha=128, dropout=0.1),
        freeze_decoder=True,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=True, avg_non_ignore=True,
                 loss_weight=1.0, loss_name='loss_bce'),
            dict(type='SoftDiceLoss', loss_weight=1.0),
            dict(type='FocalTverskyLoss', alpha=0.7, beta=0.3, gamma=0.75, loss_weight=1.0),
        ]),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

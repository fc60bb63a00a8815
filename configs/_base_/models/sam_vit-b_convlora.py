# SAM ViT-B encoder (frozen) with Conv-LoRA (r = 3, 8 conv experts, noisy top-1
# gate) on every qkv, and the prompt-free SAM mask decoder as a binary head.
# AdapterEncoderDecoder adds the experts' balance loss as `loss_moe`, the only
# signal that trains the gate (docs/conv_lora_and_losses.md).
# Put the official checkpoint at checkpoints/sam_vit_b_01ec64.pth (see README).
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
    type='AdapterEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAMViT',
        arch='b',
        img_size=1024,
        checkpoint=sam_checkpoint,
        # mask_padding=False: AutoGluon's code runs the experts on the padded
        # windows (64x64 tokens in windows of 14 at 1024x1024); True keeps them out.
        adapter=dict(type='ConvLoRA', rank=3, lora_alpha=32, num_experts=8, mask_padding=False)),
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
# Some experts get no sample in a step.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)

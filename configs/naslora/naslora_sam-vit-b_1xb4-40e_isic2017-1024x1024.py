# NAS-LoRA (r = 3, all 12 blocks) on SAM ViT-B, ISIC 2017 at 1024x1024:
# 40 epochs, weights alone for T_B = 10 epochs, then α and the weights together (joint step).
_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/isic2017.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_40e.py'
]
crop_size = (1024, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    type='NASEncoderDecoder',
    # One-level search: α and weights step on the same batch, α every iteration.
    alpha_interval=1,
    alpha_data='same',
    search_step='joint',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=crop_size[0],
        adapter=dict(type='NASLoRA', rank=3, alpha=32, op_variant='darts')))
log_processor = dict(by_epoch=True)

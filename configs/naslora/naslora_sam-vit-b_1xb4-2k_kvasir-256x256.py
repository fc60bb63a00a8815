# NAS-LoRA on SAM ViT-B, Kvasir-SEG at its native 256x256: 2k iterations,
# weights alone for T_B = 500 iterations, then α and the weights together (joint step).
# Runs on the shared data with `--data-root ../shared/data/kvasir_seg`.
_base_ = [
    '../_base_/models/sam_vit-b_lora.py', '../_base_/datasets/kvasir_seg_256x256.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_nas_2k.py'
]
crop_size = (256, 256)
data_preprocessor = dict(size=crop_size)
model = dict(
    type='NASEncoderDecoder',
    alpha_interval=1,
    alpha_data='same',
    search_step='joint',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=crop_size[0],
        adapter=dict(type='NASLoRA', rank=3, alpha=32, op_variant='darts')))

# SAM2LoRA as the authors' code trains it (sayanmndl21/SAM2LoRA), where that differs from
# ./sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py (docs/sam2lora.md, "The reference preset"):
# the first multimask token, the IoU head trained on 0.1 * |predicted IoU - IoU|, LoRA A drawn
# as randn / sqrt(r), no no_mem_embed, gradients clipped to norm 1 and cosine warm restarts
# every 1000 iterations. Prompts (the reference samples 200 points per image) stay off.
_base_ = ['./sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py']
lora = dict(type='LoRA', rank=64, lora_alpha=128, dropout=0.1, init_a='randn')
model = dict(
    backbone=dict(add_no_mem_embed=False, adapter=lora),
    decode_head=dict(mask_token=1, iou_loss_weight=0.1, decoder_adapter=lora))
optim_wrapper = dict(clip_grad=dict(_delete_=True, max_norm=1.0))
param_scheduler = [
    dict(type='CosineRestartLR', periods=[1000] * 20, restart_weights=[1.] * 20, eta_min=0.,
         by_epoch=False, begin=0, end=20000)
]

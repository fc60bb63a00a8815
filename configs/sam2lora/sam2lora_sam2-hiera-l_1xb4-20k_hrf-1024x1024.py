# SAM2LoRA on HRF vessels (mmseg's HRFDataset layout). Images are 3504x2336,
# trained and predicted at 1024x683 and scored at full size; the AUC is
# histogram-binned to bound its memory (the log states the largest error).
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
dataset_type = 'HRFDataset'
data_root = 'data/HRF'
train_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type, data_root=data_root)))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = [
    # SAM2LoRA's table: its code averages per-image Dice (0 if empty) and roc_auc_score.
    dict(type='ForegroundIoUMetric', iou_metrics=['mIoU', 'mDice'], convention='sam2lora'),
    dict(type='AUCMetric', convention='sam2lora', num_bins=10000),
]
test_evaluator = val_evaluator

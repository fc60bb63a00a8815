# SAM2LoRA trained jointly on the four vessel sets (DRIVE, CHASE_DB1, STARE,
# HRF; each in mmseg's own layout and data root) and validated on the union of
# their validation splits. For per-dataset Dice/AUC, run tools/test.py with
# the single-dataset config and this model's checkpoint.
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
vessel_sets = [('DRIVEDataset', 'data/DRIVE'), ('ChaseDB1Dataset', 'data/CHASE_DB1'),
               ('STAREDataset', 'data/STARE'), ('HRFDataset', 'data/HRF')]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            dict(type=dataset_type, data_root=root, pipeline={{_base_.train_pipeline}},
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'))
            for dataset_type, root in vessel_sets
        ]))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            dict(type=dataset_type, data_root=root, pipeline={{_base_.test_pipeline}},
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'))
            for dataset_type, root in vessel_sets
        ]))
test_dataloader = val_dataloader
val_evaluator = [
    # SAM2LoRA's table: its code averages per-image Dice (0 if empty) and roc_auc_score.
    dict(type='ForegroundIoUMetric', iou_metrics=['mIoU', 'mDice'], convention='sam2lora'),
    dict(type='AUCMetric', convention='sam2lora', num_bins=10000),
]
test_evaluator = val_evaluator

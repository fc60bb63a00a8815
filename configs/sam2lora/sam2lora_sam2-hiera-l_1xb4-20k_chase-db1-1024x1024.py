# SAM2LoRA on CHASE_DB1 vessels (mmseg's ChaseDB1Dataset layout: images/ and
# annotations/{training,validation}, first observer's labels).
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
dataset_type = 'ChaseDB1Dataset'
data_root = 'data/CHASE_DB1'
train_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type, data_root=data_root)))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader

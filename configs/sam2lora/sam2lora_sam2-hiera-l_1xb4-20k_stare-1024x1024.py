# SAM2LoRA on STARE vessels (mmseg's STAREDataset layout, Hoover's ".ah" labels).
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
dataset_type = 'STAREDataset'
data_root = 'data/STARE'
train_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type, data_root=data_root)))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader

# SAM2LoRA on optic-disc segmentation (REFUGE, ORIGA, Drishti-GS, ...), in the
# project's binary layout: img_dir/{train,val}/*.jpg and ann_dir/{train,val}/*.png
# with 0 background, 1 optic disc (cup included), 255 ignore.
_base_ = './sam2lora_sam2-hiera-l_1xb4-20k_drive-1024x1024.py'
dataset_type = 'BinarySegDataset'
data_root = 'data/optic_disc'
metainfo = dict(classes=('background', 'optic disc'), palette=[[0, 0, 0], [255, 255, 255]])
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.jpg',
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.jpg',
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader

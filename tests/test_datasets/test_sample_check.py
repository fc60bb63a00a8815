"""Per-sample checks on load (CheckSegSample) and EXIF-rotated images."""
import glob
import os.path as osp

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

import mmseg_naslora  # noqa: F401
from mmseg_naslora.datasets.kvasir import KvasirSEGDataset
from mmseg_naslora.datasets.sample_check import (CheckSegSample, check_samples,
                                                 configure_sample_checks)

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='CheckSegSample')]


def dataset(root, split='train', pipeline=PIPELINE, configure=True):
    ds = KvasirSEGDataset(data_root=root, pipeline=pipeline,
                          data_prefix=dict(img_path=f'img_dir/{split}',
                                           seg_map_path=f'ann_dir/{split}'))
    if configure:  # what the StartupCheckHook does at start-up
        configure_sample_checks(ds)
    return ds


def write_exif_rotated(path, size=(64, 80), orientation=6):
    """A JPEG whose EXIF tag says 'display rotated by 90°' (as phone cameras write)."""
    img = np.random.default_rng(0).integers(0, 255, (*size, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(path, exif=exif)


def test_configure_fills_in_classes_and_ignore_index(binary_dataset):
    ds = dataset(binary_dataset)
    check = [t for t in ds.pipeline.transforms if isinstance(t, CheckSegSample)][0]
    assert (check.num_classes, check.ignore_index, check.dataset) == \
        (2, 255, 'KvasirSEGDataset')
    assert ds[0]['gt_seg_map'].shape == (64, 80)  # good data passes


@pytest.mark.parametrize('size', [(64, 80), (64, 64)], ids=['non_square', 'square'])
def test_exif_rotated_image_is_refused_on_load_and_at_start_up(binary_dataset, size):
    img = osp.join(binary_dataset, 'img_dir', 'train', '004.jpg')
    mask = osp.join(binary_dataset, 'ann_dir', 'train', '004.png')
    write_exif_rotated(img, size)
    Image.fromarray(np.zeros(size, np.uint8)).save(mask)
    # What happened before: mmcv applies the tag, the mask loader does not.
    plain = dataset(binary_dataset, pipeline=PIPELINE[:2], configure=False)[4]
    assert plain['img'].shape[:2] == size[::-1]
    assert plain['gt_seg_map'].shape == size  # rotated image, unrotated mask
    with pytest.raises(RuntimeError, match='EXIF orientation 6') as info:
        dataset(binary_dataset)[4]
    msg = str(info.value)
    assert img in msg and 'exif_transpose' in msg and 'exiftool' in msg
    with pytest.raises(ValueError, match='EXIF orientation 6'):
        check_samples(dataset(binary_dataset), num_samples=10)


def bad_mask(root, kind):
    path = osp.join(root, 'ann_dir', 'train', '003.png')
    mask = np.asarray(Image.open(path))
    if kind == '0_255':
        Image.fromarray((mask * 255).astype(np.uint8)).save(path)
    elif kind == 'wrong_size':
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    elif kind == 'rgb':
        Image.fromarray(np.stack([mask] * 3, -1)).save(path)
    elif kind == 'value':
        Image.fromarray(np.where(mask > 0, 3, 0).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize('kind,expected', [
    ('0_255', 'only 0 and 255'), ('wrong_size', 'is 80x64 but its mask'),
    ('rgb', 'has 3 channels'), ('value', 'values [3] outside [0, 2)')])
def test_bad_mask_outside_the_start_up_sample_names_the_file(binary_dataset, kind, expected):
    path = bad_mask(binary_dataset, kind)
    ds = dataset(binary_dataset)
    check_samples(ds, num_samples=2)  # samples 0 and 5: the bad one is not read
    with pytest.raises(RuntimeError) as info:
        ds[3]
    assert path in str(info.value) and expected in str(info.value)


def test_value_check_waits_for_the_classes(binary_dataset):
    bad_mask(binary_dataset, 'value')
    ds = dataset(binary_dataset, configure=False)
    assert ds[3]['gt_seg_map'].max() == 3  # no classes known: nothing to compare with
    ds = dataset(binary_dataset, pipeline=PIPELINE[:2] + [dict(type='CheckSegSample',
                                                               num_classes=2)],
                 configure=False)
    with pytest.raises(RuntimeError, match='values'):
        ds[3]


def test_intended_only_ignore_masks_can_be_allowed(binary_dataset):
    bad_mask(binary_dataset, '0_255')
    pipeline = PIPELINE[:2] + [dict(type='CheckSegSample', allow_only_ignore=True)]
    assert dataset(binary_dataset, pipeline=pipeline)[3]['gt_seg_map'].max() == 255


def test_dataset_configs_check_every_sample():
    for path in sorted(glob.glob(osp.join(REPO_ROOT, 'configs/_base_/datasets/*.py'))):
        cfg = {}
        exec(compile(open(path).read(), path, 'exec'), cfg)
        for name in ('train_pipeline', 'test_pipeline'):
            types = [t['type'] for t in cfg[name]]
            i = types.index('LoadAnnotations')
            assert types[i + 1] == 'CheckSegSample', (path, name, types)

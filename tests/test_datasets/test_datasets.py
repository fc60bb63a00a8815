"""Benchmark dataset classes: metainfo, suffixes, loading and errors."""
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_root
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from PIL import Image


PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
KVASIR = Path(shared_data_root('kvasir_seg'))
CONVERTERS = Path(__file__).resolve().parents[2] / 'tools/dataset_converters'

# class name: (image suffix, foreground class name)
BINARY = {
    'ISIC2017Dataset': ('.jpg', 'lesion'),
    'CVCClinicDBDataset': ('.png', 'polyp'),
    'CVCColonDBDataset': ('.png', 'polyp'),
    'ETISLaribDataset': ('.png', 'polyp'),
    'CVC300Dataset': ('.png', 'polyp'),
    'CAMODataset': ('.jpg', 'camouflaged'),
    'COD10KDataset': ('.jpg', 'camouflaged'),
    'SBUShadowDataset': ('.jpg', 'shadow'),
    'LeafDiseaseDataset': ('.jpg', 'disease'),
    'MassachusettsRoadsDataset': ('.png', 'road'),
}


def build(type, root, split='train', **kwargs):
    init_default_scope('mmseg')
    return DATASETS.build(
        dict(type=type, data_root=str(root),
             data_prefix=dict(img_path=f'img_dir/{split}',
                              seg_map_path=f'ann_dir/{split}'),
             pipeline=PIPELINE, **kwargs))


def write_layout(root, img_suffix, n=2, split='train', values=(0, 1)):
    for i in range(n):
        img = np.full((6, 7, 3), 40 * i, np.uint8)
        ann = np.zeros((6, 7), np.uint8)
        ann[1:4, 2:5] = values[-1]
        ann[0, 0] = values[0]
        for sub, name, arr in (('img_dir', f'x{i}{img_suffix}', img),
                               ('ann_dir', f'x{i}.png', ann)):
            path = Path(root) / sub / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


@pytest.mark.parametrize('name', sorted(BINARY))
def test_binary_dataset_loads_its_layout(name, tmp_path):
    suffix, fg = BINARY[name]
    cls = DATASETS.get(name)
    assert cls.CONVERTER is not None
    assert (CONVERTERS / cls.CONVERTER).is_file()
    write_layout(tmp_path, suffix)
    # A file with the other image suffix is not picked up.
    other = '.png' if suffix == '.jpg' else '.jpg'
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(
        tmp_path / f'img_dir/train/stray{other}')
    ds = build(name, tmp_path)
    assert ds.metainfo['classes'] == ('background', fg)
    assert len(ds.metainfo['palette']) == 2
    assert len(ds) == 2
    item = ds[1]
    assert item['img'].shape == (6, 7, 3)
    assert set(np.unique(item['gt_seg_map'])) == {0, 1}
    assert item['reduce_zero_label'] is False


def test_trans10k_metainfo_and_loading(tmp_path):
    v1 = DATASETS.get('Trans10KV1Dataset')
    v2 = DATASETS.get('Trans10KV2Dataset')
    assert v1.METAINFO['classes'] == ('background', 'things', 'stuff')
    assert len(v2.METAINFO['classes']) == 12
    assert v2.METAINFO['classes'][1] == 'shelf'
    assert v2.METAINFO['classes'][-1] == 'storage box'
    for cls in (v1, v2):
        palette = cls.METAINFO['palette']
        assert len(palette) == len(cls.METAINFO['classes'])
        assert len({tuple(c) for c in palette}) == len(palette)
    write_layout(tmp_path, '.jpg', split='val', values=(0, 11))
    ds = build('Trans10KV2Dataset', tmp_path, 'val')
    assert set(np.unique(ds[0]['gt_seg_map'])) == {0, 11}


def test_generic_binary_dataset_with_custom_suffix(tmp_path):
    write_layout(tmp_path, '.png', n=3)
    ds = build('BinarySegDataset', tmp_path, img_suffix='.png')
    assert len(ds) == 3
    assert ds.metainfo['classes'] == ('background', 'foreground')


@pytest.mark.parametrize('name', ['ISIC2017Dataset', 'Trans10KV1Dataset'])
def test_reduce_zero_label_is_refused(name, tmp_path):
    write_layout(tmp_path, '.jpg')
    with pytest.raises(ValueError, match='reduce_zero_label must be False'):
        build(name, tmp_path, reduce_zero_label=True)


def test_missing_data_names_the_converter(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build('SBUShadowDataset', tmp_path / 'nowhere', 'test')
    msg = str(err.value)
    assert "data_prefix['img_path']" in msg and 'img_dir/test' in msg
    assert 'tools/dataset_converters/sbu.py' in msg
    with pytest.raises(FileNotFoundError, match='trans10k.py'):
        build('Trans10KV2Dataset', tmp_path / 'nowhere')


def test_wrong_suffix_is_reported(tmp_path):
    write_layout(tmp_path, '.png')
    with pytest.raises(FileNotFoundError, match=r'no "\*\.jpg" images'):
        build('CAMODataset', tmp_path)


@pytest.mark.skipif(not KVASIR.is_dir(),
                    reason='shared kvasir_seg data not available')
def test_real_binary_data():
    """The shared Kvasir-SEG copy has this layout: 0/1 masks, JPEG images."""
    ds = build('BinarySegDataset', KVASIR, 'val')
    assert len(ds) == 89
    seg = ds[0]['gt_seg_map']
    assert seg.shape == ds[0]['img'].shape[:2]
    assert set(np.unique(seg)) <= {0, 1, 255} and seg.max() >= 1

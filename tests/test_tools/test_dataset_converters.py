"""Dataset converters: fake official layouts in, mmseg layouts out."""
import importlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from PIL import Image

import mmseg_naslora  # noqa: F401  (registers the dataset classes built here)
import tools.dataset_converters._common as common

CONVERTERS = Path(__file__).resolve().parents[2] / 'tools/dataset_converters'
PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]


def load(name):
    """A converter module, as ``python -m tools.dataset_converters.<name>`` imports it."""
    return importlib.import_module(f'tools.dataset_converters.{name}')


def rgb(seed=0, size=8):
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3),
                                                dtype=np.uint8)


def mask255(seed=0, size=8):
    m = np.zeros((size, size), np.uint8)
    m[1 + seed % 3:5, 2:6] = 255
    return m


def save(path, array, fmt=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def pairs(img_dir, mask_dir, names, img_ext='.jpg', mask_ext='.png',
          mask_suffix='', mask_fn=mask255):
    for i, n in enumerate(names):
        save(Path(img_dir) / f'{n}{img_ext}', rgb(i))
        save(Path(mask_dir) / f'{n}{mask_suffix}{mask_ext}', mask_fn(i))


# ------------------------------------------------ official-layout builders
def isic_tree(src):
    layout = {'train': ('Training', 3), 'val': ('Validation', 1),
              'test': ('Test_v2', 2)}
    for split, (tag, n) in layout.items():
        pairs(src / f'ISIC-2017_{tag}_Data',
              src / f'ISIC-2017_{tag}_Part1_GroundTruth',
              [f'ISIC_{split}{i:03d}' for i in range(n)],
              mask_suffix='_segmentation')
    # Official extras that must be skipped.
    save(src / 'ISIC-2017_Training_Data/ISIC_train000_superpixels.png',
         rgb(9))
    (src / 'ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv'
     ).write_text('image_id,age\n')
    return {}


def kvasir_tree(src):
    names = [f'cju{i}abc' for i in range(4)]
    # Official masks are JPEGs: noisy 0/255 values.
    pairs(src / 'Kvasir-SEG/images', src / 'Kvasir-SEG/masks', names,
          mask_ext='.jpg')
    split = src.parent / 'kvasir_test.txt'
    split.write_text('# PraNet test list\ncju1abc.png\ncju3abc\n')
    return dict(split_file=split)


def pranet_test(src, name, n=2):
    base = src / 'TestDataset' / name
    pairs(base / 'images', base / 'masks', [str(100 + i) for i in range(n)],
          img_ext='.png')


def clinicdb_tree(src):
    pairs(src / 'TrainDataset/images', src / 'TrainDataset/masks',
          ['1', '2', '3'], img_ext='.png')
    # PraNet's TrainDataset mixes in Kvasir images; they must be left out.
    pairs(src / 'TrainDataset/images', src / 'TrainDataset/masks',
          ['cju0kvasir'], img_ext='.png')
    pranet_test(src, 'CVC-ClinicDB')
    pranet_test(src, 'Kvasir')
    return {}


def camo_tree(src):
    root = src / 'CAMO-V.1.0-CVIU2019'
    pairs(root / 'Images/Train', root / 'GT',
          ['camourflage_00001', 'camourflage_00002'])
    pairs(root / 'Images/Test', root / 'GT', ['camourflage_01001'])
    return {}


def cod10k_tree(src):
    root = src / 'COD10K-v3'
    pairs(root / 'Train/Image', root / 'Train/GT_Object',
          ['COD10K-CAM-1-Aquatic-1-BatFish-1', 'COD10K-CAM-1-Aquatic-2-X-2'])
    pairs(root / 'Test/Image', root / 'Test/GT_Object',
          ['COD10K-CAM-2-Terrestrial-3-Y-9'])
    save(root / 'Train/Image/COD10K-NonCAM-1-Aquatic-1-Sea-1.jpg', rgb(5))
    return {}


def sbu_tree(src):
    root = src / 'SBU-shadow'
    pairs(root / 'SBUTrain4KRecoveredSmall/ShadowImages',
          root / 'SBUTrain4KRecoveredSmall/ShadowMasks', ['lssd1', 'lssd2'])
    pairs(root / 'SBU-Test/ShadowImages', root / 'SBU-Test/ShadowMasks',
          ['lssd900'])
    return {}


def leaf_tree(src):
    root = src / 'leaf_disease_segmentation'
    for split, n in (('train', 2), ('val', 1), ('test', 1)):
        names = [f'{split}{i}' for i in range(n)]
        # AutoGluon's masks are 0/1.
        pairs(root / f'{split}_images', root / f'{split}_masks', names,
              mask_fn=lambda i: (mask255(i) > 0).astype(np.uint8))
        rows = ''.join(f'{i},{split}_images/{n}.jpg,{split}_masks/{n}.png\n'
                       for i, n in enumerate(names))
        (root / f'{split}.csv').write_text(',image,label\n' + rows)
    return {}


def roads_tree(src):
    for split, n in (('train', 2), ('val', 1), ('test', 1)):
        pairs(src / 'tiff' / split, src / 'tiff' / f'{split}_labels',
              [f'1007866{i}_15' for i in range(n)], img_ext='.tiff',
              mask_ext='.tif')
    return {}


def colondb_tree(src):
    pranet_test(src, 'CVC-ColonDB', 3)
    return {}


def etis_tree(src):
    pranet_test(src, 'ETIS-LaribPolypDB', 2)
    return {}


def cvc300_tree(src):
    pranet_test(src, 'CVC-300', 2)
    return {}


V1_COLOURS = np.array([[0, 0, 0], [255, 0, 0], [255, 255, 255]], np.uint8)


def trans10k_v1_mask(i):
    index = np.zeros((8, 8), np.uint8)
    index[:4, :4] = 1
    index[5:, 5:] = 2
    return V1_COLOURS[index]


def trans10k_v1_tree(src):
    pairs(src / 'train/images', src / 'train/masks', ['1', '2'],
          mask_suffix='_mask', mask_fn=trans10k_v1_mask)
    for split in ('validation', 'test'):
        for level, name in (('easy', '10'), ('hard', '20')):
            pairs(src / split / level / 'images', src / split / level /
                  'masks', [name + split[0]], mask_suffix='_mask',
                  mask_fn=trans10k_v1_mask)
    return {}


def trans10k_v2_mask(i):
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 11
    m[4:, :2] = 3
    return m


def trans10k_v2_tree(src):
    for split, n in (('train', 2), ('validation', 1), ('test', 1)):
        pairs(src / 'Trans10K_cls12' / split / 'images',
              src / 'Trans10K_cls12' / split / 'masks_12',
              [f'{split}{i}' for i in range(n)], mask_suffix='_mask',
              mask_fn=trans10k_v2_mask)
    return {}


CASES = {
    'isic2017': ('isic2017', isic_tree, 'ISIC2017Dataset',
                 dict(train=3, val=1, test=2)),
    'kvasir': ('kvasir', kvasir_tree, 'KvasirSEGDataset',
               dict(train=2, test=2)),
    'cvc_clinicdb': ('cvc_clinicdb', clinicdb_tree, 'CVCClinicDBDataset',
                     dict(train=3, test=2)),
    'cvc_colondb': ('cvc_colondb', colondb_tree, 'CVCColonDBDataset',
                    dict(test=3)),
    'etis': ('etis', etis_tree, 'ETISLaribDataset', dict(test=2)),
    'cvc300': ('cvc300', cvc300_tree, 'CVC300Dataset', dict(test=2)),
    'camo': ('camo', camo_tree, 'CAMODataset', dict(train=2, test=1)),
    'cod10k': ('cod10k', cod10k_tree, 'COD10KDataset', dict(train=2,
                                                            test=1)),
    'sbu': ('sbu', sbu_tree, 'SBUShadowDataset', dict(train=2, test=1)),
    'leaf_disease': ('leaf_disease', leaf_tree, 'LeafDiseaseDataset',
                     dict(train=2, val=1, test=1)),
    'massachusetts_roads': ('massachusetts_roads', roads_tree,
                            'MassachusettsRoadsDataset',
                            dict(train=2, val=1, test=1)),
    'trans10k_v1': ('trans10k', trans10k_v1_tree, 'Trans10KV1Dataset',
                    dict(train=2, val=2, test=2)),
    'trans10k_v2': ('trans10k', trans10k_v2_tree, 'Trans10KV2Dataset',
                    dict(train=2, val=1, test=1)),
}
EXPECTED_VALUES = {'trans10k_v1': {0, 1, 2}, 'trans10k_v2': {0, 3, 11}}


def build(dataset, root, split, **kwargs):
    init_default_scope('mmseg')
    return DATASETS.build(
        dict(type=dataset, data_root=str(root),
             data_prefix=dict(img_path=f'img_dir/{split}',
                              seg_map_path=f'ann_dir/{split}'),
             pipeline=PIPELINE, **kwargs))


def leftovers(parent):
    return [p.name for p in Path(parent).iterdir() if '.tmp-' in p.name
            or '.old-' in p.name]


@pytest.mark.parametrize('case', sorted(CASES))
def test_convert_and_load(case, tmp_path, capsys):
    script, make, dataset, counts = CASES[case]
    src = tmp_path / 'src'
    src.mkdir()
    extra = make(src)
    out = tmp_path / 'out'
    stats = load(script).convert(src, out, **extra)

    assert {k: v['images'] for k, v in stats.items()} == counts
    printed = capsys.readouterr().out
    for split, n in counts.items():
        assert f'{split:<6} {n:>6} images' in printed
    assert not leftovers(tmp_path)
    values = EXPECTED_VALUES.get(case, {0, 1})
    for split, n in counts.items():
        ds = build(dataset, out, split)
        assert len(ds) == n
        classes = ds.metainfo['classes']
        assert len(classes) == {'trans10k_v1': 3, 'trans10k_v2': 12}.get(
            case, 2)
        assert classes[0] == 'background'
        for i in range(n):
            item = ds[i]
            seg = item['gt_seg_map']
            assert seg.shape == item['img'].shape[:2] == (8, 8)
            assert set(np.unique(seg).tolist()) == values


def test_isic_skips_extras_and_keeps_jpeg_bytes(tmp_path):
    src = tmp_path / 'src'
    isic_tree(src)
    load('isic2017').convert(src, tmp_path / 'out')
    out = tmp_path / 'out/img_dir/train'
    assert sorted(p.name for p in out.iterdir()) == [
        'ISIC_train000.jpg', 'ISIC_train001.jpg', 'ISIC_train002.jpg']
    assert (out / 'ISIC_train001.jpg').read_bytes() == (
        src / 'ISIC-2017_Training_Data/ISIC_train001.jpg').read_bytes()
    ann = np.array(Image.open(
        tmp_path / 'out/ann_dir/train/ISIC_train001.png'))
    assert ann.ndim == 2 and ann.dtype == np.uint8
    np.testing.assert_array_equal(ann, mask255(1) // 255)


def test_isic_from_official_zips(tmp_path):
    extracted = tmp_path / 'extracted'
    isic_tree(extracted)
    src = tmp_path / 'downloads'
    src.mkdir()
    everything = zipfile.ZipFile(tmp_path / 'all.zip', 'w')
    for folder in extracted.iterdir():
        with zipfile.ZipFile(src / f'{folder.name}.zip', 'w') as zf:
            for f in folder.iterdir():
                zf.write(f, f'{folder.name}/{f.name}')
                everything.write(f, f'wrapper/{folder.name}/{f.name}')
            zf.writestr('__MACOSX/._junk', b'')
    everything.close()
    shutil.rmtree(extracted)
    conv = load('isic2017')
    # The six official zips side by side, read without extracting.
    stats = conv.convert(src, tmp_path / 'out')
    assert {k: v['images'] for k, v in stats.items()} == dict(
        train=3, val=1, test=2)
    assert len(build('ISIC2017Dataset', tmp_path / 'out', 'test')) == 2
    # One zip file, its layout under a wrapper folder.
    stats = conv.convert(tmp_path / 'all.zip', tmp_path / 'out2')
    assert stats['train']['images'] == 3
    assert (tmp_path / 'out2/img_dir/val/ISIC_val000.jpg').is_file()


def test_unknown_layout_is_refused_and_nothing_written(tmp_path):
    src = tmp_path / 'src'
    isic_tree(src)
    os.rename(src / 'ISIC-2017_Validation_Part1_GroundTruth',
              src / 'validation_masks')
    with pytest.raises(common.LayoutError) as err:
        load('isic2017').convert(src, tmp_path / 'out')
    msg = str(err.value)
    assert 'missing: ISIC-2017_Validation_Part1_GroundTruth' in msg
    assert 'validation_masks' in msg  # what was found
    assert not (tmp_path / 'out').exists()
    assert not leftovers(tmp_path)


def test_missing_mask_is_named(tmp_path):
    src = tmp_path / 'src'
    camo_tree(src)
    os.remove(src / 'CAMO-V.1.0-CVIU2019/GT/camourflage_00002.png')
    with pytest.raises(common.LayoutError, match='camourflage_00002'):
        load('camo').convert(src, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_bad_mask_midway_leaves_no_partial_output(tmp_path):
    src = tmp_path / 'src'
    sbu_tree(src)
    # A class-index mask in the last split: found only while writing.
    index_mask = np.zeros((8, 8), np.uint8)
    index_mask[:4] = 1
    index_mask[4:, :4] = 2
    save(src / 'SBU-shadow/SBU-Test/ShadowMasks/lssd900.png', index_mask)
    with pytest.raises(common.MaskValueError, match='lssd900'):
        load('sbu').convert(src, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    assert not leftovers(tmp_path)


def test_mask_size_mismatch_is_refused(tmp_path):
    src = tmp_path / 'src'
    camo_tree(src)
    save(src / 'CAMO-V.1.0-CVIU2019/GT/camourflage_01001.png',
         np.zeros((8, 9), np.uint8))
    with pytest.raises(common.ConversionError, match='9x8'):
        load('camo').convert(src, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_existing_output_needs_overwrite(tmp_path):
    src = tmp_path / 'src'
    camo_tree(src)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'old.txt').write_text('keep me')
    conv = load('camo')
    with pytest.raises(common.ConversionError, match='--overwrite'):
        conv.convert(src, out)
    assert (out / 'old.txt').read_text() == 'keep me'
    conv.convert(src, out, overwrite=True)
    assert not (out / 'old.txt').exists()
    assert len(list((out / 'img_dir/train').iterdir())) == 2
    assert not leftovers(tmp_path)


def test_kvasir_split_file(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    kvasir_tree(src)
    conv = load('kvasir')
    with pytest.raises(common.ConversionError, match='--split-file'):
        conv.convert(src, tmp_path / 'out')
    bad = tmp_path / 'bad.txt'
    bad.write_text('cju1abc\nnot_a_kvasir_image\n')
    with pytest.raises(common.ConversionError, match='not_a_kvasir_image'):
        conv.convert(src, tmp_path / 'out', split_file=bad)
    # A folder of PraNet's TestDataset works as the split list.
    listing = tmp_path / 'TestDataset/Kvasir/images'
    listing.mkdir(parents=True)
    (listing / 'cju2abc.png').write_bytes(b'')
    stats = conv.convert(src, tmp_path / 'out', split_file=listing)
    assert {k: v['images'] for k, v in stats.items()} == dict(train=3,
                                                               test=1)
    assert os.listdir(tmp_path / 'out/img_dir/test') == ['cju2abc.jpg']


def test_clinicdb_official_archive(tmp_path):
    src = tmp_path / 'src'
    pairs(src / 'CVC-ClinicDB/Original', src / 'CVC-ClinicDB/Ground Truth',
          [str(i) for i in range(1, 5)], img_ext='.tif', mask_ext='.tif')
    conv = load('cvc_clinicdb')
    with pytest.raises(common.ConversionError, match='--split-file'):
        conv.convert(src, tmp_path / 'out')
    split = tmp_path / 'test.txt'
    split.write_text('2\n4\n')
    stats = conv.convert(src, tmp_path / 'out', split_file=split)
    assert {k: v['images'] for k, v in stats.items()} == dict(train=2,
                                                               test=2)
    # TIFF frames are re-encoded losslessly to PNG.
    png = np.array(Image.open(tmp_path / 'out/img_dir/test/2.png'))
    np.testing.assert_array_equal(png, rgb(1))
    ds = build('CVCClinicDBDataset', tmp_path / 'out', 'train')
    assert len(ds) == 2


def test_cod10k_noncam(tmp_path):
    src = tmp_path / 'src'
    cod10k_tree(src)
    stats = load('cod10k').convert(src, tmp_path / 'out',
                                   include_noncam=True)
    assert stats['train']['images'] == 3
    empty = np.array(Image.open(
        tmp_path / 'out/ann_dir/train/COD10K-NonCAM-1-Aquatic-1-Sea-1.png'))
    assert empty.shape == (8, 8) and not empty.any()


def test_trans10k_v1_colours_and_subset_lists(tmp_path):
    src = tmp_path / 'src'
    trans10k_v1_tree(src)
    conv = load('trans10k')
    conv.convert(src, tmp_path / 'out')
    ann = np.array(Image.open(tmp_path / 'out/ann_dir/train/1.png'))
    expected = np.zeros((8, 8), np.uint8)
    expected[:4, :4] = 1
    expected[5:, 5:] = 2
    np.testing.assert_array_equal(ann, expected)
    assert (tmp_path / 'out/splits/val_hard.txt').read_text() == '20v\n'
    hard = build('Trans10KV1Dataset', tmp_path / 'out', 'val',
                 ann_file='splits/val_hard.txt')
    assert len(hard) == 1


def test_trans10k_refuses_unknown_colours_and_indices(tmp_path):
    src = tmp_path / 'v1'
    trans10k_v1_tree(src)
    bad = trans10k_v1_mask(0)
    bad[0, 0] = (0, 255, 255)  # RGB mean 170: no Trans10K v1 class
    save(src / 'train/masks/2_mask.png', bad)
    conv = load('trans10k')
    with pytest.raises(common.MaskValueError, match='170'):
        conv.convert(src, tmp_path / 'out1')
    src = tmp_path / 'v2'
    trans10k_v2_tree(src)
    save(src / 'Trans10K_cls12/test/masks_12/test0_mask.png',
         np.full((8, 8), 12, np.uint8))
    with pytest.raises(common.MaskValueError, match=r'\[12\]'):
        conv.convert(src, tmp_path / 'out2')
    assert not (tmp_path / 'out1').exists()
    assert not (tmp_path / 'out2').exists()


def test_split_without_images_is_refused(tmp_path):
    src = tmp_path / 'src'
    camo_tree(src)
    os.remove(src / 'CAMO-V.1.0-CVIU2019/Images/Test/camourflage_01001.jpg')
    save(src / 'CAMO-V.1.0-CVIU2019/Images/Test/camourflage_01001.png',
         rgb(3))
    # Only JPEGs are taken from the image folders; the PNG has no match.
    with pytest.raises(common.LayoutError, match='No images'):
        load('camo').convert(src, tmp_path / 'out')


# ------------------------------------------------------ mask mapping ---
def test_binary_mask_mapping():
    to_index = common.binary_mask_to_index
    zero_one = (mask255() > 0).astype(np.uint8)
    np.testing.assert_array_equal(to_index(zero_one), zero_one)
    np.testing.assert_array_equal(to_index(mask255()), zero_one)
    np.testing.assert_array_equal(to_index(mask255() > 0), zero_one)
    # Grey RGB and JPEG-like noise around 0 and 255 are fine.
    noisy = mask255().astype(np.int16) + np.random.default_rng(0).integers(
        -20, 20, (8, 8))
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_index(np.stack([noisy] * 3, -1)),
                                  zero_one)
    # Threshold at 128.
    np.testing.assert_array_equal(
        to_index(np.array([[0, 127, 128, 255]] * 40, np.uint8),
                 max_mid_fraction=0.5), [[0, 0, 1, 1]] * 40)
    with pytest.raises(common.MaskValueError, match='0 1 2'):
        to_index(np.array([[0, 1, 2]], np.uint8), 'idx.png')
    with pytest.raises(common.MaskValueError, match='colour'):
        to_index(np.stack([mask255(), np.zeros((8, 8), np.uint8),
                           mask255()], -1))
    soft = np.linspace(0, 255, 64).reshape(8, 8).astype(np.uint8)
    with pytest.raises(common.MaskValueError, match='far from 0 and 255'):
        to_index(soft)


def test_decode_keeps_palette_indices():
    im = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode='P')
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    np.testing.assert_array_equal(common.decode_mask(buf.getvalue()),
                                  [[0, 1], [1, 0]])


# ---------------------------------------------------------------- CLI ---
@pytest.mark.parametrize('command', [[str(CONVERTERS / 'camo.py')],
                                     ['-m', 'tools.dataset_converters.camo']],
                         ids=['script', 'module'])
def test_cli(tmp_path, command):
    src = tmp_path / 'src'
    camo_tree(src)
    run = dict(capture_output=True, text=True, timeout=60, cwd=CONVERTERS.parents[1])
    ok = subprocess.run([sys.executable, *command, str(src), '-o', str(tmp_path / 'out')],
                        **run)
    assert ok.returncode == 0, ok.stderr
    assert 'train       2 images (official: 1000)' in ok.stdout
    bad = subprocess.run([sys.executable, *command, str(tmp_path / 'nowhere'),
                          '-o', str(tmp_path / 'out2')], **run)
    assert bad.returncode == 1
    assert 'error:' in bad.stderr and 'does not exist' in bad.stderr
    assert 'Traceback' not in bad.stderr

"""Convert CVC-ClinicDB to mmseg's layout, with the split the papers use.

Bernal et al., "WM-DOVA maps for accurate polyp highlighting in
colonoscopy", CMIG 2015. CVC-ClinicDB has no official split; polyp papers use
PraNet's (Fan et al., MICCAI 2020): 550 training and 62 test images. Two
sources are accepted:

1. PraNet's packages (preferred, the split comes with them): its
   ``TrainDataset`` holds the 900 Kvasir and the 550 CVC-ClinicDB training
   images, CVC-ClinicDB ones being the numerically named files::

       TrainDataset/images/1.png  (or image/)     numeric names = ClinicDB
       TrainDataset/masks/1.png   (or mask/)
       TestDataset/CVC-ClinicDB/images/*.png      62 images
       TestDataset/CVC-ClinicDB/masks/*.png

2. The official archive, with ``--split-file`` naming the test images (a
   text file, one name per line, or a folder such as PraNet's
   ``TestDataset/CVC-ClinicDB/images``)::

       CVC-ClinicDB/Original/1.tif ... 612.tif
       CVC-ClinicDB/Ground Truth/1.tif ... 612.tif

Output (``CVCClinicDBDataset``); TIFF images are re-encoded losslessly::

    OUT_DIR/img_dir/{train,test}/<n>.png
    OUT_DIR/ann_dir/{train,test}/<n>.png   (0 background, 1 polyp)

Usage::

    python tools/dataset_converters/cvc_clinicdb.py PraNet/data -o data/cvc_clinicdb
    python tools/dataset_converters/cvc_clinicdb.py CVC-ClinicDB.zip \\
        -o data/cvc_clinicdb --split-file clinicdb_test.txt
"""
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (ConversionError, LayoutError,  # noqa: E402
                                              SourceTree, assign_split, binary_mask_to_index, cli,
                                              pair_folder, pranet_test_samples, read_name_list,
                                              report, write_dataset)

EXPECTED = dict(train=550, test=62)
CLASSES = ('background', 'polyp')


def _locate_first(tree: SourceTree, layouts: Sequence[Sequence[str]],
                  dataset: str, hint: str = '') -> Tuple[str, int]:
    """:meth:`SourceTree.locate` for the first of several accepted layouts.

    Returns:
        tuple[str, int]: The root and the index of the layout that matched.
    """
    first_error = None
    for i, required in enumerate(layouts):
        try:
            return tree.locate(required, dataset, hint), i
        except LayoutError as e:
            first_error = first_error or e
    others = '; '.join(', '.join(r) for r in layouts[1:])
    raise LayoutError(f'{first_error}\n  also accepted: {others}')


def _is_numeric_stem(s: str) -> bool:
    """True for PraNet's CVC-ClinicDB names (``'1'``..``'612'``)."""
    return re.fullmatch(r'\d+', s) is not None


def _pranet_samples(tree: SourceTree):
    root, which = _locate_first(
        tree, [('TrainDataset/images', 'TrainDataset/masks'),
               ('TrainDataset/image', 'TrainDataset/mask')],
        'PraNet TrainDataset')
    img, msk = ('images', 'masks') if which == 0 else ('image', 'mask')
    train = pair_folder(tree, 'train', f'{root}TrainDataset/{img}',
                        f'{root}TrainDataset/{msk}', image_exts=('.png', ),
                        mask_exts=('.png', ), keep=_is_numeric_stem)
    return train + pranet_test_samples(tree, 'CVC-ClinicDB')


def _official_samples(tree: SourceTree, split_file):
    root = tree.locate(['Original', 'Ground Truth'], 'CVC-ClinicDB')
    samples = pair_folder(tree, 'train', root + 'Original',
                          root + 'Ground Truth')
    return assign_split(samples, read_name_list(split_file), 'test', 'train',
                        split_file)


def convert(src, out_dir, split_file=None,
            overwrite: bool = False) -> Dict[str, Dict]:
    """Convert CVC-ClinicDB from PraNet's packages or the official archive.

    With ``split_file`` the official archive is read; without it, PraNet's
    ``TrainDataset``/``TestDataset``.
    """
    tree = SourceTree(src)
    if split_file is not None:
        samples = _official_samples(tree, split_file)
    else:
        try:
            samples = _pranet_samples(tree)
        except LayoutError as e:
            if any(d.split('/')[-1] == 'Original' for d in tree.dirs()):
                raise ConversionError(
                    f'{src} looks like the official CVC-ClinicDB archive, '
                    'which has no split: pass --split-file with the test '
                    'image names (e.g. PraNet\'s TestDataset/CVC-ClinicDB/'
                    'images), or convert PraNet\'s TrainDataset and '
                    'TestDataset instead.') from e
            raise
    stats = write_dataset(tree, samples, out_dir, img_ext='.png',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='CVC-ClinicDB')
    print(report('CVC-ClinicDB', out_dir, stats, EXPECTED, CLASSES))
    return stats


def _args(parser) -> None:
    parser.add_argument('--split-file', default=None,
                        help='official archive only: test image names, a '
                        'text file (one per line) or a folder')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv, _args)


if __name__ == '__main__':
    main()

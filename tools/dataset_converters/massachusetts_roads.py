"""Convert the Massachusetts Roads dataset to mmseg's layout.

Mnih, "Machine Learning for Aerial Image Labeling", PhD thesis, University
of Toronto, 2013. The official split (1108 training, 14 validation, 49 test
tiles of 1500x1500) is kept.

Layout assumed (the release as mirrored with TIFF tiles, e.g. the common
Kaggle copy; a ``png/`` tree with the same folders works too)::

    tiff/train/10078660_15.tiff     tiff/train_labels/10078660_15.tif
    tiff/val/*.tiff                 tiff/val_labels/*.tif
    tiff/test/*.tiff                tiff/test_labels/*.tif

Images are re-encoded losslessly to PNG. Output
(``MassachusettsRoadsDataset``)::

    OUT_DIR/img_dir/{train,val,test}/<name>.png
    OUT_DIR/ann_dir/{train,val,test}/<name>.png   (0 background, 1 road)

Usage::

    python tools/dataset_converters/massachusetts_roads.py SRC -o data/roads
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (SourceTree, binary_mask_to_index, cli,  # noqa: E402
                                              pair_folder, report, write_dataset)

SPLITS = ('train', 'val', 'test')
EXPECTED = dict(train=1108, val=14, test=49)
CLASSES = ('background', 'road')
EXTS = ('.tif', '.tiff', '.png')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert Massachusetts Roads; returns per-split counts."""
    tree = SourceTree(src)
    root = tree.locate([f'{s}{suffix}' for s in SPLITS
                        for suffix in ('', '_labels')],
                       'Massachusetts Roads',
                       hint='Pass the folder holding train/, train_labels/, '
                       'val/, ... (e.g. tiff/).')
    samples = []
    for split in SPLITS:
        samples += pair_folder(tree, split, root + split,
                               f'{root}{split}_labels', image_exts=EXTS,
                               mask_exts=EXTS)
    stats = write_dataset(tree, samples, out_dir, img_ext='.png',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='Massachusetts Roads')
    print(report('Massachusetts Roads', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

"""Convert ISIC 2017 lesion segmentation (Part 1) to mmseg's layout.

Codella et al., "Skin Lesion Analysis Toward Melanoma Detection: A Challenge
at ISBI 2017", ISBI 2018. The official splits are kept.

Official layout assumed (the six zip files of the challenge, extracted or
not; ``SRC`` may also be a folder above them)::

    ISIC-2017_Training_Data/ISIC_0000000.jpg                  2000 images
    ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
    ISIC-2017_Validation_Data/ISIC_xxxxxxx.jpg                 150 images
    ISIC-2017_Validation_Part1_GroundTruth/ISIC_xxxxxxx_segmentation.png
    ISIC-2017_Test_v2_Data/ISIC_xxxxxxx.jpg                    600 images
    ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_xxxxxxx_segmentation.png

The ``*_superpixels.png`` files and metadata CSVs in the data folders are
skipped. Output (``ISIC2017Dataset``)::

    OUT_DIR/img_dir/{train,val,test}/ISIC_xxxxxxx.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,val,test}/ISIC_xxxxxxx.png   (0 background, 1 lesion)

Usage::

    python tools/dataset_converters/isic2017.py SRC -o data/isic2017
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, SourceTree,  # noqa: E402
                                              binary_mask_to_index, cli, pair_folder, report,
                                              write_dataset)

SPLITS = {
    'train': ('ISIC-2017_Training_Data',
              'ISIC-2017_Training_Part1_GroundTruth'),
    'val': ('ISIC-2017_Validation_Data',
            'ISIC-2017_Validation_Part1_GroundTruth'),
    'test': ('ISIC-2017_Test_v2_Data', 'ISIC-2017_Test_v2_Part1_GroundTruth'),
}
EXPECTED = dict(train=2000, val=150, test=600)
CLASSES = ('background', 'lesion')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert ISIC 2017 Part 1; returns per-split counts."""
    tree = SourceTree(src)
    root = tree.locate([d for pair in SPLITS.values() for d in pair],
                       'ISIC 2017 Part 1',
                       hint='Download the training, validation and test '
                       'data and Part 1 ground truth (6 zip files).')
    samples = []
    for split, (img_dir, gt_dir) in SPLITS.items():
        samples += pair_folder(tree, split, root + img_dir, root + gt_dir,
                               image_exts=JPEG_EXTS, mask_exts=('.png', ),
                               mask_suffix='_segmentation')
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='ISIC 2017')
    print(report('ISIC 2017', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

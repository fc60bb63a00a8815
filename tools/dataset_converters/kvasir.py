"""Convert Kvasir-SEG to mmseg's layout, with the split the papers use.

Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020. Kvasir-SEG has
no official split. Polyp papers (PraNet, Fan et al., MICCAI 2020, and the
SAM fine-tuning papers after it) train on 900 images and test on the 100
images of PraNet's ``TestDataset/Kvasir``. That list is not part of the
official archive, so it must be supplied with ``--split-file``: a text file
with one image name per line (extensions and folders are ignored), or a
folder whose file names are taken, e.g. PraNet's
``TestDataset/Kvasir/images``. Listed images go to ``test``, the rest to
``train``; every listed name must exist.

Official layout assumed (``kvasir-seg.zip``, extracted or not)::

    Kvasir-SEG/images/cju0qkwl35piu0993l0dewei2.jpg     1000 images
    Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg      JPEG 0/255 masks

Masks are JPEG-compressed, so they are thresholded at 128. Output
(``KvasirSEGDataset``)::

    OUT_DIR/img_dir/{train,test}/<name>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,test}/<name>.png   (0 background, 1 polyp)

Usage::

    python tools/dataset_converters/kvasir.py SRC -o data/kvasir_seg \\
        --split-file PraNet/data/TestDataset/Kvasir/images
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, ConversionError, SourceTree,  # noqa: E402
                                              assign_split, binary_mask_to_index, cli, pair_folder,
                                              read_name_list, report, write_dataset)

EXPECTED = dict(train=900, test=100)
CLASSES = ('background', 'polyp')


def convert(src, out_dir, split_file=None,
            overwrite: bool = False) -> Dict[str, Dict]:
    """Convert Kvasir-SEG; ``split_file`` lists the test images."""
    if split_file is None:
        raise ConversionError(
            'Kvasir-SEG has no official split: pass --split-file with the '
            'test image names (e.g. PraNet\'s TestDataset/Kvasir/images).')
    names = read_name_list(split_file)
    tree = SourceTree(src)
    root = tree.locate(['Kvasir-SEG/images', 'Kvasir-SEG/masks'],
                       'Kvasir-SEG', hint='Pass the folder holding '
                       'Kvasir-SEG/ or kvasir-seg.zip.')
    samples = pair_folder(tree, 'train', root + 'Kvasir-SEG/images',
                          root + 'Kvasir-SEG/masks', image_exts=JPEG_EXTS)
    samples = assign_split(samples, names, 'test', 'train', split_file)
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='Kvasir-SEG')
    print(report('Kvasir-SEG', out_dir, stats, EXPECTED, CLASSES))
    return stats


def _args(parser) -> None:
    parser.add_argument('--split-file', required=True,
                        help='test image names: a text file (one per line) '
                        'or a folder such as PraNet\'s '
                        'TestDataset/Kvasir/images')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv, _args)


if __name__ == '__main__':
    main()

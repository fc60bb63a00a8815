"""Convert CVC-300 to mmseg's layout (test split only).

Vazquez et al., "A benchmark for endoluminal scene segmentation of
colonoscopy images" (EndoScene), JHE 2017; CVC-300 is its test part. In the
polyp benchmark of PraNet (Fan et al., MICCAI 2020), followed by the SAM
fine-tuning papers, CVC-300 is an unseen test set: models train on
Kvasir-SEG + CVC-ClinicDB and are tested here. The benchmark copy is
PraNet's ``TestDataset`` package, which is the layout assumed::

    TestDataset/CVC-300/images/*.png     60 images
    TestDataset/CVC-300/masks/*.png      0/255 masks

``SRC`` is the folder holding ``TestDataset/`` (or ``TestDataset.zip``).
Output (``CVC300Dataset``)::

    OUT_DIR/img_dir/test/<name>.png   (bytes copied)
    OUT_DIR/ann_dir/test/<name>.png   (0 background, 1 polyp)

Usage::

    python tools/dataset_converters/cvc300.py PraNet/data -o data/cvc300
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (SourceTree, binary_mask_to_index, cli,  # noqa: E402
                                              pranet_test_samples, report, write_dataset)

EXPECTED = dict(test=60)
CLASSES = ('background', 'polyp')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert PraNet's ``TestDataset/CVC-300``; returns the counts."""
    tree = SourceTree(src)
    samples = pranet_test_samples(tree, 'CVC-300')
    stats = write_dataset(tree, samples, out_dir, img_ext='.png',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='CVC-300')
    print(report('CVC-300', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

"""Convert CVC-ColonDB to mmseg's layout (test split only).

Tajbakhsh et al., "Automated polyp detection in colonoscopy videos using
shape and context information", IEEE TMI 2015. In the polyp benchmark of
PraNet (Fan et al., MICCAI 2020), followed by the SAM fine-tuning papers,
CVC-ColonDB is an unseen test set: models train on Kvasir-SEG + CVC-ClinicDB
and are tested here. The benchmark copy is PraNet's ``TestDataset`` package,
which is the layout assumed::

    TestDataset/CVC-ColonDB/images/*.png     380 images
    TestDataset/CVC-ColonDB/masks/*.png      0/255 masks

``SRC`` is the folder holding ``TestDataset/`` (or ``TestDataset.zip``).
Output (``CVCColonDBDataset``)::

    OUT_DIR/img_dir/test/<name>.png   (bytes copied)
    OUT_DIR/ann_dir/test/<name>.png   (0 background, 1 polyp)

Usage::

    python tools/dataset_converters/cvc_colondb.py PraNet/data -o data/cvc_colondb
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (SourceTree, binary_mask_to_index, cli,  # noqa: E402
                                              pranet_test_samples, report, write_dataset)

EXPECTED = dict(test=380)
CLASSES = ('background', 'polyp')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert PraNet's ``TestDataset/CVC-ColonDB``; returns the counts."""
    tree = SourceTree(src)
    samples = pranet_test_samples(tree, 'CVC-ColonDB')
    stats = write_dataset(tree, samples, out_dir, img_ext='.png',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='CVC-ColonDB')
    print(report('CVC-ColonDB', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

"""Convert CAMO (camouflaged object segmentation) to mmseg's layout.

Le et al., "Anabranch Network for Camouflaged Object Segmentation", CVIU
2019. The official split (1000 training, 250 test images) is kept.

Official layout assumed (``CAMO-V.1.0-CVIU2019.zip``, extracted or not)::

    CAMO-V.1.0-CVIU2019/Images/Train/camourflage_00001.jpg
    CAMO-V.1.0-CVIU2019/Images/Test/camourflage_00xxx.jpg
    CAMO-V.1.0-CVIU2019/GT/camourflage_00001.png     masks of both splits

Output (``CAMODataset``)::

    OUT_DIR/img_dir/{train,test}/<name>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,test}/<name>.png   (0 background, 1 camouflaged)

Usage::

    python tools/dataset_converters/camo.py SRC -o data/camo
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, SourceTree,  # noqa: E402
                                              binary_mask_to_index, cli, pair_folder, report,
                                              write_dataset)

EXPECTED = dict(train=1000, test=250)
CLASSES = ('background', 'camouflaged')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert CAMO; returns per-split counts."""
    tree = SourceTree(src)
    root = tree.locate(['Images/Train', 'Images/Test', 'GT'], 'CAMO',
                       hint='Pass the folder holding CAMO-V.1.0-CVIU2019/.')
    samples = []
    for split, folder in (('train', 'Train'), ('test', 'Test')):
        samples += pair_folder(tree, split, f'{root}Images/{folder}',
                               f'{root}GT', image_exts=JPEG_EXTS,
                               mask_exts=('.png', ))
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='CAMO')
    print(report('CAMO', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

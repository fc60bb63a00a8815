"""Convert SBU Shadow to mmseg's layout.

Vicente et al., "Large-scale Training of Shadow Detectors with Noisily-
Annotated Shadow Examples", ECCV 2016. The official split (4089 training,
638 test images) is kept.

Official layout assumed (``SBU-shadow.zip``, extracted or not)::

    SBU-shadow/SBUTrain4KRecoveredSmall/ShadowImages/<name>.jpg
    SBU-shadow/SBUTrain4KRecoveredSmall/ShadowMasks/<name>.png
    SBU-shadow/SBU-Test/ShadowImages/<name>.jpg
    SBU-shadow/SBU-Test/ShadowMasks/<name>.png

Output (``SBUShadowDataset``)::

    OUT_DIR/img_dir/{train,test}/<name>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,test}/<name>.png   (0 non-shadow, 1 shadow)

Usage::

    python tools/dataset_converters/sbu.py SRC -o data/sbu
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, SourceTree,  # noqa: E402
                                              binary_mask_to_index, cli, pair_folder, report,
                                              write_dataset)

SPLITS = {'train': 'SBUTrain4KRecoveredSmall', 'test': 'SBU-Test'}
EXPECTED = dict(train=4089, test=638)
CLASSES = ('background', 'shadow')


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert SBU Shadow; returns per-split counts."""
    tree = SourceTree(src)
    root = tree.locate([f'{d}/{sub}' for d in SPLITS.values()
                        for sub in ('ShadowImages', 'ShadowMasks')],
                       'SBU Shadow', hint='Pass the folder holding '
                       'SBU-shadow/ or SBU-shadow.zip.')
    samples = []
    for split, folder in SPLITS.items():
        samples += pair_folder(tree, split, f'{root}{folder}/ShadowImages',
                               f'{root}{folder}/ShadowMasks',
                               image_exts=JPEG_EXTS, mask_exts=('.png', ))
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='SBU Shadow')
    print(report('SBU Shadow', out_dir, stats, EXPECTED, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

"""Convert COD10K (camouflaged object detection) to mmseg's layout.

Fan et al., "Camouflaged Object Detection", CVPR 2020. The official split is
kept. As in the COD benchmark, only the camouflaged images
(``COD10K-CAM-*``: 3040 training, 2026 test) are converted by default;
``--include-noncam`` adds the non-camouflaged ones (``COD10K-NonCAM-*``)
with their masks, or an all-background mask where the release has none.

Official layout assumed (``COD10K-v3.zip``, extracted or not)::

    COD10K-v3/Train/Image/COD10K-CAM-1-Aquatic-1-BatFish-1.jpg
    COD10K-v3/Train/GT_Object/COD10K-CAM-1-Aquatic-1-BatFish-1.png
    COD10K-v3/Test/Image/*.jpg
    COD10K-v3/Test/GT_Object/*.png

(``GT_Edge``/``GT_Instance`` are not used.) Output (``COD10KDataset``)::

    OUT_DIR/img_dir/{train,test}/<name>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,test}/<name>.png   (0 background, 1 camouflaged)

Usage::

    python tools/dataset_converters/cod10k.py SRC -o data/cod10k
"""
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, Sample, SourceTree,  # noqa: E402
                                              binary_mask_to_index, cli, pair_folder, report, stem,
                                              write_dataset)

EXPECTED = dict(train=3040, test=2026)
CLASSES = ('background', 'camouflaged')


def _is_cam(name: str) -> bool:
    return '-NonCAM-' not in name


def convert(src, out_dir, include_noncam: bool = False,
            overwrite: bool = False) -> Dict[str, Dict]:
    """Convert COD10K; returns per-split counts."""
    tree = SourceTree(src)
    root = tree.locate(['Train/Image', 'Train/GT_Object', 'Test/Image',
                        'Test/GT_Object'], 'COD10K',
                       hint='Pass the folder holding COD10K-v3/.')
    samples = []
    for split, folder in (('train', 'Train'), ('test', 'Test')):
        image_dir = f'{root}{folder}/Image'
        mask_dir = f'{root}{folder}/GT_Object'
        samples += pair_folder(tree, split, image_dir, mask_dir,
                               image_exts=JPEG_EXTS, mask_exts=('.png', ),
                               keep=_is_cam)
        if include_noncam:
            masks = {stem(p): p for p in tree.listdir(mask_dir, ('.png', ))}
            for p in tree.listdir(image_dir, JPEG_EXTS):
                if not _is_cam(stem(p)):
                    samples.append(
                        Sample(split, stem(p), p, masks.get(stem(p))))
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='COD10K')
    print(report('COD10K', out_dir, stats,
                 None if include_noncam else EXPECTED, CLASSES))
    return stats


def _args(parser) -> None:
    parser.add_argument('--include-noncam', action='store_true',
                        help='also convert the non-camouflaged images')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv, _args)


if __name__ == '__main__':
    main()

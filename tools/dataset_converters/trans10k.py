"""Convert Trans10K (transparent object segmentation) v1 or v2 to mmseg.

v1: Xie et al., "Segmenting Transparent Objects in the Wild", ECCV 2020;
3 classes (background, things, stuff). v2: Xie et al., "Segmenting
Transparent Object in the Wild with Transformer" (Trans2Seg), IJCAI 2021;
11 fine classes + background. The official splits (5000 train, 1000
validation, 4428 test images) are kept; ``--version`` picks the release
(by default it is detected from the folder names).

v1 layout assumed (as read by the authors' TransLab code)::

    train/images/<n>.jpg                 train/masks/<n>_mask.png
    validation/{easy,hard}/images/*.jpg  validation/{easy,hard}/masks/*_mask.png
    test/{easy,hard}/images/*.jpg        test/{easy,hard}/masks/*_mask.png

v1 masks are colour images; as in TransLab's loader, the mean of the RGB
channels gives the class: 0 background, 85 things, 255 stuff. Any other
value is refused. The easy/hard subsets are merged into ``val``/``test``
and also listed in ``splits/{val,test}_{easy,hard}.txt`` (usable as
``ann_file``).

v2 layout assumed (as read by the authors' Trans2Seg code)::

    {train,validation,test}/images/<n>.jpg
    {train,validation,test}/masks_12/<n>_mask.png   class indices 0..11

Output (``Trans10KV1Dataset`` / ``Trans10KV2Dataset``)::

    OUT_DIR/img_dir/{train,val,test}/<n>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,val,test}/<n>.png   (class indices)

Usage::

    python tools/dataset_converters/trans10k.py SRC -o data/trans10k_v2
"""
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (JPEG_EXTS, ConversionError,  # noqa: E402
                                              MaskValueError, Sample, SourceTree, cli, pair_folder,
                                              report, write_dataset)

SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
EXPECTED = dict(train=5000, val=1000, test=4428)
V1_CLASSES = ('background', 'things', 'stuff')
V2_CLASSES = ('background', 'shelf', 'jar or tank', 'freezer', 'window',
              'glass door', 'eyeglass', 'cup', 'floor glass', 'glass bowl',
              'water bottle', 'storage box')
# TransLab maps the channel mean of a v1 mask to its class.
V1_MEAN_TO_CLASS = {0: 0, 85: 1, 255: 2}


def v1_mask_to_index(mask: np.ndarray, name: str) -> np.ndarray:
    """Map a Trans10K v1 colour mask to 0 background, 1 things, 2 stuff."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., :3].astype(np.float64).mean(-1)
    values = np.unique(mask)
    unknown = [v for v in values.tolist() if v not in V1_MEAN_TO_CLASS]
    if unknown:
        raise MaskValueError(
            f'{name} has colours whose RGB mean is {unknown[:6]}; Trans10K '
            'v1 masks use black (background), mean 85 (things) and white '
            '(stuff) only.')
    out = np.zeros(mask.shape, np.uint8)
    for mean, index in V1_MEAN_TO_CLASS.items():
        out[mask == mean] = index
    return out


def v2_mask_to_index(mask: np.ndarray, name: str,
                     ignore_index: int = 255) -> np.ndarray:
    """Check a Trans10K v2 class-index mask (values 0..11, or ``ignore_index``)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskValueError(
            f'{name} has shape {mask.shape}; expected a single-channel '
            'class-index mask (mode L or P).')
    num_classes = len(V2_CLASSES)
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad or (values.size and values.min() < 0):
        raise MaskValueError(
            f'{name} has values {bad or values.tolist()} outside the class '
            f'indices 0..{num_classes - 1} (and {ignore_index} = ignore).')
    return mask.astype(np.uint8)


def _v1_samples(tree: SourceTree, root: str):
    samples: List[Sample] = []
    lists: Dict[str, List[str]] = {}
    samples += pair_folder(tree, 'train', f'{root}train/images',
                           f'{root}train/masks', image_exts=JPEG_EXTS,
                           mask_exts=('.png', ), mask_suffix='_mask')
    for split in ('val', 'test'):
        for level in ('easy', 'hard'):
            base = f'{root}{SPLITS[split]}/{level}'
            part = pair_folder(tree, split, f'{base}/images', f'{base}/masks',
                               image_exts=JPEG_EXTS, mask_exts=('.png', ),
                               mask_suffix='_mask')
            samples += part
            lists[f'splits/{split}_{level}.txt'] = ''.join(
                f'{s.name}\n' for s in part)
    return samples, lists


def convert(src, out_dir, version: str = 'auto',
            overwrite: bool = False) -> Dict[str, Dict]:
    """Convert Trans10K v1 or v2; returns per-split counts."""
    if version not in ('auto', 'v1', 'v2'):
        raise ConversionError(
            f'version must be auto, v1 or v2, got {version!r}.')
    tree = SourceTree(src)
    if version == 'auto':
        v2 = any(d.split('/')[-1] == 'masks_12' for d in tree.dirs())
        version = 'v2' if v2 else 'v1'
    if version == 'v2':
        root = tree.locate([f'{d}/{sub}' for d in SPLITS.values()
                            for sub in ('images', 'masks_12')],
                           'Trans10K v2')
        samples, lists = [], {}
        for split, folder in SPLITS.items():
            samples += pair_folder(tree, split, f'{root}{folder}/images',
                                   f'{root}{folder}/masks_12',
                                   image_exts=JPEG_EXTS, mask_exts=('.png', ),
                                   mask_suffix='_mask')
        mask_fn, classes = v2_mask_to_index, V2_CLASSES
    else:
        root = tree.locate(
            ['train/images', 'train/masks'] +
            [f'{SPLITS[s]}/{lv}/{sub}' for s in ('val', 'test')
             for lv in ('easy', 'hard') for sub in ('images', 'masks')],
            'Trans10K v1', hint='For Trans10K v2 (masks_12/ folders) pass '
            '--version v2.')
        samples, lists = _v1_samples(tree, root)
        mask_fn, classes = v1_mask_to_index, V1_CLASSES
    title = f'Trans10K {version}'
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=mask_fn, overwrite=overwrite,
                          dataset=title, extra_files=lists)
    print(report(title, out_dir, stats, EXPECTED, classes))
    return stats


def _args(parser) -> None:
    parser.add_argument('--version', default='auto',
                        choices=('auto', 'v1', 'v2'),
                        help='Trans10K release (default: detect masks_12/)')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv, _args)


if __name__ == '__main__':
    main()

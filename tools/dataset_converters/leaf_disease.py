"""Convert the leaf disease segmentation benchmark to mmseg's layout.

The binary leaf disease benchmark of Conv-LoRA (Zhong et al., ICLR 2024)
comes from AutoGluon's ``leaf_disease_segmentation.zip``, whose CSV files fix
the train/val/test split; those splits are kept. Layout assumed::

    leaf_disease_segmentation/train.csv    columns 'image' and 'label'
    leaf_disease_segmentation/val.csv      (paths relative to the CSV;
    leaf_disease_segmentation/test.csv      an unnamed index column is ok)
    leaf_disease_segmentation/<image and mask files the CSVs name>

Images must be JPEG; masks are 0/1 or 0/255. Output
(``LeafDiseaseDataset``)::

    OUT_DIR/img_dir/{train,val,test}/<name>.jpg   (bytes copied)
    OUT_DIR/ann_dir/{train,val,test}/<name>.png   (0 background, 1 disease)

Usage::

    python tools/dataset_converters/leaf_disease.py SRC -o data/leaf_disease
"""
import csv
import io
import posixpath
import sys
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

if __name__ == '__main__' and not __package__:  # a script: import from the root, as -m does
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from tools.dataset_converters._common import (LayoutError, Sample, SourceTree,  # noqa: E402
                                              binary_mask_to_index, cli, report, stem,
                                              write_dataset)

SPLITS = ('train', 'val', 'test')
CLASSES = ('background', 'disease')


def _read_csv_pairs(tree: SourceTree, csv_path: str, split: str,
                    image_col: str = 'image',
                    label_col: str = 'label') -> List[Sample]:
    """Samples listed by a CSV with image and label path columns.

    Paths are relative to the CSV's folder (AutoGluon's benchmark layout).
    """
    text = tree.read(csv_path).decode('utf-8-sig')
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or image_col not in rows[0] or label_col not in rows[0]:
        cols = ', '.join(rows[0]) if rows else '(empty file)'
        raise LayoutError(f'{csv_path} must have columns {image_col!r} and '
                          f'{label_col!r}; found: {cols}.')
    base = str(PurePosixPath(csv_path).parent)
    base = '' if base == '.' else base + '/'
    out, absent = [], []
    for row in rows:
        img = _join(base, row[image_col])
        lab = _join(base, row[label_col])
        for p in (img, lab):
            if p not in tree:
                absent.append(p)
        out.append(Sample(split, stem(img), img, lab))
    if absent:
        raise LayoutError(f'{len(absent)} files listed in {csv_path} are '
                          f'missing, e.g. {", ".join(absent[:5])}.')
    return out


def _join(base: str, rel: str) -> str:
    return posixpath.normpath(
        posixpath.join(base, rel.strip().replace('\\', '/')))


def _find_root(tree: SourceTree) -> str:
    roots = []
    for p in tree.paths():
        path = PurePosixPath(p)
        if path.name != 'train.csv':
            continue
        root = '' if str(path.parent) == '.' else f'{path.parent}/'
        if all(f'{root}{s}.csv' in tree for s in SPLITS):
            roots.append(root)
    if not roots:
        found = [p for p in tree.paths() if p.endswith('.csv')][:8]
        raise LayoutError(
            f'{tree.root} does not have the leaf disease benchmark layout.\n'
            '  expected: train.csv, val.csv and test.csv side by side, with '
            "columns 'image' and 'label'\n"
            f'  CSV files found: {", ".join(found) or "(none)"}\n'
            f'  found at the top level: {tree.top_level()}')
    roots.sort(key=lambda r: (r.count('/'), r))
    return roots[0]


def convert(src, out_dir, overwrite: bool = False) -> Dict[str, Dict]:
    """Convert the leaf disease benchmark; returns per-split counts."""
    tree = SourceTree(src)
    root = _find_root(tree)
    samples = []
    for split in SPLITS:
        samples += _read_csv_pairs(tree, f'{root}{split}.csv', split)
    stats = write_dataset(tree, samples, out_dir, img_ext='.jpg',
                          mask_fn=binary_mask_to_index, overwrite=overwrite,
                          dataset='leaf disease')
    print(report('leaf disease', out_dir, stats, None, CLASSES))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    return cli(__doc__, convert, argv)


if __name__ == '__main__':
    main()

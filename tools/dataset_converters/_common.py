"""Shared helpers of the dataset converters in this folder.

Every converter follows the same three steps, all of them here:

1. :class:`SourceTree` indexes the source (an extracted folder, the official
   zip files inside it, or a single zip file) without extracting anything, and
   :meth:`SourceTree.locate` finds the dataset root by the folders the official
   layout must have. A wrong or incomplete layout raises :class:`LayoutError`
   naming what was expected and what was found, before anything is written.
2. The converter turns the official layout into :class:`Sample` records
   (split, output name, image member, mask member).
3. :func:`write_dataset` writes mmseg's ``img_dir/{split}`` and
   ``ann_dir/{split}`` layout into a temporary folder next to ``OUT_DIR`` and
   renames it into place only when every sample converted, so a failure never
   leaves partial output. Masks become single-channel index PNGs.

Binary masks are mapped by :func:`binary_mask_to_index`: ``0/1`` masks stay as
they are, ``0/255`` masks (JPEG noise included) are thresholded at 128, and
anything else (class-index masks, colour masks, soft maps) is refused.

Helpers that only one converter needs live in that converter.
"""
import argparse
import io
import os
import os.path as osp
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import (Callable, Dict, Iterable, List, Optional, Sequence, Set,
                    Tuple)

import numpy as np
from PIL import Image

JPEG_EXTS = ('.jpg', '.jpeg')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.tif', '.tiff', '.bmp')
MASK_EXTS = ('.png', '.tif', '.tiff', '.bmp', '.gif', '.jpg', '.jpeg')

# Grey levels strictly between these count as "neither 0 nor 255" when a
# 0/255 mask is checked; JPEG-compressed masks (Kvasir-SEG) only have a thin
# band of such pixels along the object boundary.
_MID_LOW, _MID_HIGH = 32, 223


class ConversionError(ValueError):
    """A source that cannot be converted; the message says how to fix it."""


class LayoutError(ConversionError):
    """The source folder does not have the official layout."""


class MaskValueError(ConversionError):
    """A mask holds values the converter does not know how to map."""


def _is_junk(path: str) -> bool:
    """macOS archive litter and hidden files, never dataset content."""
    parts = PurePosixPath(path).parts
    return any(p == '__MACOSX' or p.startswith('.') for p in parts)


class SourceTree:
    """Read-only index of a dataset source: a folder or a zip file.

    Files of a folder are indexed recursively; the members of ``*.zip`` files
    directly inside the folder are indexed as if the archives were extracted
    next to them (an extracted file wins over the same path in an archive).
    A source given as a zip file is indexed as its members.

    Args:
        root (str | Path): The source folder or zip file.
    """

    def __init__(self, root) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise LayoutError(f'Source {self.root} does not exist.')
        self._files: Dict[str, Tuple[Optional[Path], str]] = {}
        self._zips: Dict[Path, zipfile.ZipFile] = {}
        if self.root.is_file():
            if self.root.suffix.lower() != '.zip':
                raise LayoutError(f'Source {self.root} is a file but not a '
                                  'zip archive; pass the dataset folder or '
                                  'its official zip file.')
            self._index_zip(self.root)
            return
        zips = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if _is_junk(rel):
                    continue
                if full.parent == self.root and name.lower().endswith('.zip'):
                    zips.append(full)
                else:
                    self._files[rel] = (None, str(full))
        for path in zips:
            self._index_zip(path)

    def _index_zip(self, path: Path) -> None:
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise LayoutError(f'{path} is not a readable zip file ({e}); '
                              're-download it or extract it by hand.') from e
        self._zips[path] = archive
        for info in archive.infolist():
            if info.is_dir() or _is_junk(info.filename):
                continue
            self._files.setdefault(info.filename.strip('/'),
                                   (path, info.filename))

    def __contains__(self, rel: str) -> bool:
        return rel in self._files

    def paths(self) -> List[str]:
        """All indexed files as posix paths relative to the source."""
        return sorted(self._files)

    def read(self, rel: str) -> bytes:
        """The bytes of one indexed file."""
        archive, member = self._files[rel]
        if archive is None:
            return Path(member).read_bytes()
        return self._zips[archive].read(member)

    def describe(self, rel: str) -> str:
        """A human-readable location of ``rel`` (for error messages)."""
        archive, member = self._files[rel]
        return f'{archive}:{member}' if archive is not None else member

    def dirs(self) -> Set[str]:
        """Every folder that holds at least one indexed file (recursively)."""
        out = set()
        for rel in self._files:
            parent = PurePosixPath(rel).parent
            while str(parent) != '.':
                out.add(str(parent))
                parent = parent.parent
        return out

    def listdir(self, folder: str,
                exts: Optional[Sequence[str]] = None) -> List[str]:
        """Paths of the files directly inside ``folder`` (sorted).

        Args:
            folder (str): Posix folder path relative to the source ('' for the
                top level).
            exts (Sequence[str], optional): Keep only these lower-case
                extensions (with the dot).
        """
        folder = folder.strip('/')
        out = []
        for rel in self._files:
            parent = str(PurePosixPath(rel).parent)
            if (parent if parent != '.' else '') != folder:
                continue
            if exts is None or osp.splitext(rel)[1].lower() in exts:
                out.append(rel)
        return sorted(out)

    def top_level(self, limit: int = 12) -> str:
        """The first entries of the top level, for error messages."""
        names = sorted({PurePosixPath(p).parts[0] for p in self._files})
        shown = ', '.join(names[:limit]) or '(nothing)'
        more = f' and {len(names) - limit} more' if len(names) > limit else ''
        return shown + more

    def locate(self, required: Sequence[str], dataset: str,
               hint: str = '') -> str:
        """Find the dataset root: the shallowest folder holding ``required``.

        The root may be the source itself or any folder below it, so a
        wrapper folder around the official layout is fine.

        Args:
            required (Sequence[str]): Folders (posix, relative to the dataset
                root) that the official layout has.
            dataset (str): Dataset name for the error message.
            hint (str): Extra advice appended to the error message.

        Returns:
            str: The root as a posix prefix ('' or ending in '/').
        """
        dirs = self.dirs()
        first = required[0].strip('/')
        candidates = set()
        for d in dirs:
            if d == first:
                candidates.add('')
            elif d.endswith('/' + first):
                candidates.add(d[:-len(first)])
        roots = sorted((c for c in candidates
                        if all(c + r.strip('/') in dirs for r in required)),
                       key=lambda c: (c.count('/'), c))
        if not roots:
            missing = [r for r in required
                       if not any(d == r or d.endswith('/' + r) for d in dirs)]
            msg = (f'{self.root} does not have the official {dataset} layout.'
                   f'\n  expected folders: {", ".join(required)}'
                   f'\n  missing: {", ".join(missing) or "(all exist, but not under one root)"}'
                   f'\n  found at the top level: {self.top_level()}')
            raise LayoutError(msg + (f'\n  {hint}' if hint else ''))
        if len(roots) > 1 and roots[0].count('/') == roots[1].count('/'):
            raise LayoutError(
                f'{self.root} holds the {dataset} layout more than once '
                f'({", ".join(r or "./" for r in roots[:4])}); pass one of '
                'these folders as the source.')
        return roots[0]


@dataclass(frozen=True)
class Sample:
    """One image/mask pair to write.

    Args:
        split (str): Output split folder, e.g. ``'train'``.
        name (str): Output file stem (unique within the split).
        image (str): Path of the image in the :class:`SourceTree`.
        mask (str, optional): Path of the mask in the source; ``None`` writes
            an all-background mask (e.g. COD10K's non-camouflaged images).
    """
    split: str
    name: str
    image: str
    mask: Optional[str]


def stem(path: str) -> str:
    """File name without folder and extension."""
    return osp.splitext(PurePosixPath(path).name)[0]


def pair_folder(tree: SourceTree,
                split: str,
                image_dir: str,
                mask_dir: str,
                *,
                image_exts: Sequence[str] = IMAGE_EXTS,
                mask_exts: Sequence[str] = MASK_EXTS,
                mask_suffix: str = '',
                keep: Optional[Callable[[str], bool]] = None) -> List[Sample]:
    """Pair the images of one folder with the masks of another by file stem.

    Args:
        tree (SourceTree): The source.
        split (str): Output split of the pairs.
        image_dir (str): Folder of the images (posix, relative to the source).
        mask_dir (str): Folder of the masks.
        image_exts (Sequence[str]): Image extensions to take; other files
            (metadata, superpixel maps, ...) are skipped.
        mask_exts (Sequence[str]): Mask extensions to take.
        mask_suffix (str): What the mask stem adds to the image stem, e.g.
            ``'_segmentation'`` for ISIC or ``'_mask'`` for Trans10K.
        keep (Callable[[str], bool], optional): Predicate on the image stem;
            images it rejects are skipped.

    Returns:
        list[Sample]: Pairs sorted by name.
    """
    images = {stem(p): p for p in tree.listdir(image_dir, image_exts)}
    if keep is not None:
        images = {k: v for k, v in images.items() if keep(k)}
    masks = {}
    for p in tree.listdir(mask_dir, mask_exts):
        s = stem(p)
        if mask_suffix:
            if not s.endswith(mask_suffix):
                continue
            s = s[:-len(mask_suffix)]
        masks[s] = p
    if not images:
        raise LayoutError(
            f'No images ({"/".join(image_exts)}) in {image_dir or "./"} of '
            f'{tree.root} (split {split!r}).')
    missing = sorted(set(images) - set(masks))
    if missing:
        raise LayoutError(
            f'{len(missing)} of {len(images)} images in {image_dir} have no '
            f'mask "{{name}}{mask_suffix}{mask_exts[0]}" in {mask_dir}, e.g. '
            f'{", ".join(missing[:5])}. Is the download complete?')
    return [Sample(split, k, images[k], masks[k]) for k in sorted(images)]


def read_name_list(path) -> Set[str]:
    """Read a split list: file stems, one per line, or a folder of files.

    Lines may hold paths and extensions (both are dropped); blank lines and
    ``#`` comments are skipped. A folder gives the stems of the files in it,
    so e.g. PraNet's ``TestDataset/Kvasir/images`` can be passed as is.
    """
    path = Path(path)
    if path.is_dir():
        names = {osp.splitext(p.name)[0] for p in path.iterdir()
                 if p.is_file() and not p.name.startswith('.')}
    elif path.is_file():
        names = set()
        for line in path.read_text().splitlines():
            line = line.split('#', 1)[0].strip()
            if line:
                names.add(stem(line.replace('\\', '/')))
    else:
        raise ConversionError(f'Split file {path} does not exist.')
    if not names:
        raise ConversionError(f'Split file {path} lists no names.')
    return names


def assign_split(samples: Sequence[Sample], names: Set[str], split: str,
                 other: str, split_file) -> List[Sample]:
    """Move the samples named in ``names`` to ``split``, the rest to ``other``.

    Every listed name must exist, so a split list of another dataset (or
    another naming) is refused instead of silently giving an empty split.
    """
    available = {s.name for s in samples}
    unknown = sorted(names - available)
    if unknown:
        raise ConversionError(
            f'{len(unknown)} of the {len(names)} names in {split_file} are '
            f'not in the source, e.g. {", ".join(unknown[:5])}; the list '
            f'must name images of this dataset by file stem.')
    return [Sample(split if s.name in names else other, s.name, s.image,
                   s.mask) for s in samples]


# ----------------------------------------------------------------- masks ---
def _to_grey(mask: np.ndarray, name: str) -> np.ndarray:
    """Collapse a grey, RGB(A) or boolean mask to one channel."""
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.ndim == 3:
        rgb = mask[..., :3].astype(np.int32)
        spread = rgb.max(-1) - rgb.min(-1)
        if (spread > _MID_LOW).mean() > 0.01:
            raise MaskValueError(
                f'{name} is a colour mask (RGB channels differ); expected a '
                'grey 0/1 or 0/255 binary mask.')
        mask = np.rint(rgb.mean(-1))
    if mask.ndim != 2:
        raise MaskValueError(f'{name} has shape {mask.shape}; expected a '
                             '2-D mask.')
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise MaskValueError(
            f'{name} has values in [{mask.min()}, {mask.max()}]; expected an '
            '8-bit 0/1 or 0/255 binary mask.')
    return mask.astype(np.uint8)


def binary_mask_to_index(mask: np.ndarray,
                         name: str = 'mask',
                         threshold: int = 128,
                         max_mid_fraction: float = 0.05) -> np.ndarray:
    """Map a binary mask to the index values 0 (background) / 1 (foreground).

    ``0/1`` masks are kept. ``0/255`` masks, including JPEG-compressed ones
    whose values scatter around 0 and 255, become ``mask >= threshold``.
    Masks that are neither are refused: class-index masks (e.g. values
    ``{0, 1, 2}``), colour masks and soft maps, where more than
    ``max_mid_fraction`` of the pixels lie far from both 0 and 255.

    Args:
        mask (np.ndarray): ``(H, W)``, ``(H, W, 3|4)`` or boolean mask.
        name (str): Mask name for error messages.
        threshold (int): Foreground threshold of 0/255 masks. Defaults to 128.
        max_mid_fraction (float): Largest fraction of pixels allowed strictly
            between 32 and 223 in a 0/255 mask. Defaults to 0.05.

    Returns:
        np.ndarray: ``uint8`` mask with values in ``{0, 1}``.
    """
    grey = _to_grey(np.asarray(mask), name)
    if grey.size == 0 or grey.max() <= 1:
        return grey
    values = np.unique(grey)
    mid = ((grey > _MID_LOW) & (grey < _MID_HIGH)).mean()
    if grey.max() < threshold or mid > max_mid_fraction:
        shown = ' '.join(map(str, values[:8])) + (' ...' if len(values) > 8
                                                  else '')
        raise MaskValueError(
            f'{name} is neither a 0/1 nor a 0/255 binary mask (values: '
            f'{shown}; {mid:.1%} of the pixels are far from 0 and 255). '
            'Class-index, colour and soft masks are not binary masks.')
    return (grey >= threshold).astype(np.uint8)


def decode_mask(data: bytes) -> np.ndarray:
    """Decode mask bytes, keeping palette indices as they are."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ('P', 'L', '1', 'RGB', 'RGBA', 'LA', 'I', 'I;16'):
            if im.mode == 'LA':
                im = im.convert('L')
            return np.array(im)
        return np.array(im.convert('RGB'))


# ---------------------------------------------------------------- writing ---
def _image_size(data: bytes, name: str) -> Tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[1], im.size[0]
    except Exception as e:  # PIL raises several types for broken files
        raise ConversionError(f'Cannot read image {name}: {e}') from e


def _write_image(data: bytes, src_ext: str, dst: Path, img_ext: str) -> None:
    if src_ext in (JPEG_EXTS if img_ext == '.jpg' else (img_ext, )):
        dst.write_bytes(data)  # byte copy: no re-encoding loss
        return
    with Image.open(io.BytesIO(data)) as im:
        im = im if im.mode in ('RGB', 'L') else im.convert('RGB')
        im.save(dst, format='PNG')


def write_dataset(tree: SourceTree,
                  samples: Iterable[Sample],
                  out_dir,
                  *,
                  img_ext: str,
                  mask_fn: Callable[[np.ndarray, str], np.ndarray],
                  overwrite: bool = False,
                  dataset: str = 'dataset',
                  extra_files: Optional[Dict[str, str]] = None
                  ) -> Dict[str, Dict]:
    """Write samples into mmseg's layout, atomically.

    Images whose format is already ``img_ext`` are copied byte for byte;
    others are re-encoded losslessly to PNG (``img_ext='.png'``). A JPEG
    target only accepts JPEG sources, since anything else would lose quality.
    Masks are decoded, mapped by ``mask_fn`` to a ``uint8`` index array of the
    image's size and saved as single-channel PNG.

    Everything is written to a temporary folder next to ``out_dir`` first; it
    replaces ``out_dir`` only after every sample converted, and is removed on
    any failure.

    Args:
        tree (SourceTree): The source.
        samples (Iterable[Sample]): What to write.
        out_dir (str | Path): Output folder (``img_dir/``, ``ann_dir/``).
        img_ext (str): ``'.jpg'`` or ``'.png'``.
        mask_fn (Callable): ``(mask_array, name) -> index array``.
        overwrite (bool): Replace a non-empty ``out_dir``. Defaults to False.
        dataset (str): Dataset name for the report.
        extra_files (dict, optional): Text files to write too, as
            ``{relative path: content}`` (e.g. subset lists).

    Returns:
        dict: Per split, ``dict(images=N, pixels={index: count})``.
    """
    if img_ext not in ('.jpg', '.png'):
        raise ValueError(f'img_ext must be ".jpg" or ".png", got {img_ext!r}.')
    samples = list(samples)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise ConversionError(
                f'{out_dir} already exists and is not empty; choose another '
                'output folder or pass --overwrite.')
    if not samples:
        raise LayoutError(f'No {dataset} samples found in {tree.root}.')
    seen = set()
    for s in samples:
        key = (s.split, s.name)
        if key in seen:
            raise LayoutError(f'Two {dataset} images would be written as '
                              f'{s.split}/{s.name}; the source has duplicate '
                              'file names.')
        seen.add(key)
        ext = osp.splitext(s.image)[1].lower()
        if img_ext == '.jpg' and ext not in JPEG_EXTS:
            raise LayoutError(f'Expected JPEG images for {dataset}, found '
                              f'{tree.describe(s.image)}.')
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.tmp-',
                                dir=out_dir.parent))
    stats: Dict[str, Dict] = {}
    try:
        for s in samples:
            img_dir = tmp / 'img_dir' / s.split
            ann_dir = tmp / 'ann_dir' / s.split
            if s.split not in stats:
                img_dir.mkdir(parents=True)
                ann_dir.mkdir(parents=True)
                stats[s.split] = dict(images=0, pixels={})
            data = tree.read(s.image)
            h, w = _image_size(data, tree.describe(s.image))
            if s.mask is None:
                index = np.zeros((h, w), np.uint8)
            else:
                where = tree.describe(s.mask)
                try:
                    raw = decode_mask(tree.read(s.mask))
                except Exception as e:
                    raise ConversionError(f'Cannot read mask {where}: {e}')
                index = mask_fn(raw, where)
                if index.shape != (h, w):
                    raise ConversionError(
                        f'Mask {where} is {index.shape[1]}x{index.shape[0]} '
                        f'but its image {tree.describe(s.image)} is {w}x{h}.')
            _write_image(data, osp.splitext(s.image)[1].lower(),
                         img_dir / f'{s.name}{img_ext}', img_ext)
            Image.fromarray(index).save(ann_dir / f'{s.name}.png')
            st = stats[s.split]
            st['images'] += 1
            values, counts = np.unique(index, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                st['pixels'][v] = st['pixels'].get(v, 0) + c
        for rel, text in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.old-',
                                        dir=out_dir.parent))
            os.replace(out_dir, old / 'old')
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def report(dataset: str, out_dir, stats: Dict[str, Dict],
           expected: Optional[Dict[str, int]] = None,
           classes: Optional[Sequence[str]] = None) -> str:
    """Format the per-split counts (and the official counts, if known)."""
    lines = [f'{dataset}: wrote {out_dir}']
    for split, st in stats.items():
        total = sum(st['pixels'].values()) or 1
        share = ', '.join(
            f'{classes[k] if classes and k < len(classes) else k} '
            f'{100 * v / total:.1f}%' for k, v in sorted(st['pixels'].items()))
        official = ''
        if expected and split in expected:
            official = (f' (official: {expected[split]})'
                        if expected[split] != st['images'] else ' (= official)')
        lines.append(f'  {split:<6} {st["images"]:>6} images{official}; '
                     f'pixels: {share}')
    return '\n'.join(lines)


def cli(description: str,
        convert: Callable[..., Dict[str, Dict]],
        argv: Optional[Sequence[str]] = None,
        add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None
        ) -> Dict[str, Dict]:
    """Shared command line: ``SRC -o OUT_DIR [--overwrite] [extra options]``.

    Conversion errors exit with status 1 and the error message, without a
    traceback.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='official folder (extracted) or the '
                        'folder holding the official zip files')
    parser.add_argument('-o', '--out-dir', required=True,
                        help='output folder for img_dir/ and ann_dir/')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a non-empty output folder')
    if add_args is not None:
        add_args(parser)
    args = vars(parser.parse_args(argv))
    src, out_dir = args.pop('src'), args.pop('out_dir')
    try:
        return convert(src, out_dir, **args)
    except ConversionError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1)


# ------------------------------------------------- PraNet's polyp layout ---
def pranet_test_samples(tree: SourceTree, name: str,
                        split: str = 'test') -> List[Sample]:
    """Samples of PraNet's ``TestDataset/<name>/{images,masks}/*.png``.

    Fan et al., "PraNet: Parallel Reverse Attention Network for Polyp
    Segmentation", MICCAI 2020. Its test package is the form in which the
    polyp benchmarks (Kvasir, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB and
    EndoScene's CVC-300) are evaluated by later papers.
    """
    root = tree.locate([f'TestDataset/{name}/images',
                        f'TestDataset/{name}/masks'],
                       f'PraNet TestDataset/{name}',
                       hint='Download PraNet\'s TestDataset (see '
                       'docs/datasets.md) and pass the folder that holds '
                       'TestDataset/ (or TestDataset.zip).')
    return pair_folder(tree, split, f'{root}TestDataset/{name}/images',
                       f'{root}TestDataset/{name}/masks',
                       image_exts=('.png', ), mask_exts=('.png', ))


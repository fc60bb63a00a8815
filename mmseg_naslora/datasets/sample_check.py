"""Checks of a segmentation dataset's files: a sample at start-up, every sample on load.

Bad data otherwise surfaces deep inside training: an unreadable image as
mmcv's ``failed to load image`` assertion, a 0/255 mask as a CUDA
device-side assert or a silently wrong loss, an image/mask size mismatch as a
shape error in a random crop. Reading a few evenly spaced samples at start-up
(:func:`check_samples`) turns these into one error that names the file and
the fix; the :class:`CheckSegSample` transform, right after
``LoadAnnotations`` in the dataset configs, checks every other sample when
it is loaded, cheaply (the mask is already decoded; one ``bincount``).

EXIF orientation: mmcv's default image loader (cv2) applies a JPEG's EXIF
orientation tag, PIL's ``Image.open`` and the mask loader do not, so an
EXIF-rotated photo is loaded rotated while its mask is not: the two no
longer line up (square images) or differ in size (others). Such images are
refused with the fix, rather than guessing which of the two was meant.
"""
import os.path as osp
from typing import Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS
from PIL import Image

#: EXIF tag id of the orientation (1 = stored as displayed).
EXIF_ORIENTATION = 0x0112
_ORIENTATIONS = {2: 'mirrored', 3: 'rotated 180°', 4: 'flipped', 5: 'mirrored, rotated 90°',
                 6: 'rotated 90°', 7: 'mirrored, rotated 270°', 8: 'rotated 270°'}


def _converter_hint(dataset) -> str:
    converter = getattr(dataset, 'CONVERTER', None)
    if converter:
        return (f'convert the official release with python tools/dataset_converters/'
                f'{converter} SRC -o DATA_ROOT (it writes 0/1 masks, 255 = ignore)')
    return ('write masks as single-channel index PNGs with values 0..K-1 and 255 for '
            'ignore (a 0/255 binary mask becomes 0/1 with mask // 255, as the '
            'tools/dataset_converters scripts do)')


def _open(path: str, what: str, dataset) -> np.ndarray:
    if not osp.isfile(path):
        raise FileNotFoundError(f'{type(dataset).__name__}: {what} {path} does not exist.')
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as err:  # PIL raises several types for broken files
        raise ValueError(
            f'{type(dataset).__name__}: cannot decode {what} {path} ({err}); the file is '
            'corrupt or not an image. Re-export it, or remove it (and its mask) from '
            'the split.') from err


def exif_orientation(path: str) -> int:
    """The EXIF orientation tag of an image (1 when absent); reads the header only."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # unreadable files are reported by the decoders
        return 1


def check_exif_orientation(path: str, name: str) -> None:
    """Refuse an image whose EXIF orientation mmcv would apply but its mask not.

    Raises:
        ValueError: naming the file, what the tag does and the two fixes.
    """
    orientation = exif_orientation(path)
    if orientation == 1:
        return
    raise ValueError(
        f'{name}: image {path} has EXIF orientation {orientation} '
        f'({_ORIENTATIONS.get(orientation, "transformed")}): mmcv\'s image loader applies '
        'it but the mask loader does not, so image and mask would no longer line up (or '
        'differ in size). Fix the file: if the mask was drawn on the image as displayed, '
        'write the rotation into the pixels (python -c "from PIL import Image, ImageOps; '
        f'ImageOps.exif_transpose(Image.open(\'{path}\')).save(\'{path}\')"); if the mask '
        'matches the stored pixels, remove the tag (e.g. exiftool -Orientation= FILE).')


def sample_indices(length: int, num_samples: int) -> Sequence[int]:
    """Evenly spaced indices: the first, the last and ``num_samples - 2`` between."""
    if length == 0 or num_samples <= 0:
        return []
    return sorted(set(np.linspace(0, length - 1, min(num_samples, length)).astype(int)))


def check_samples(dataset, num_samples: int = 8) -> None:
    """Decode ``num_samples`` images and masks of ``dataset`` and check them.

    Checks that each image and mask decodes, that they have the same height
    and width, and that mask values lie in ``[0, K) ∪ {ignore_index}`` with
    ``K = len(dataset.metainfo['classes'])`` (after ``reduce_zero_label``).

    Args:
        dataset: A loaded :class:`mmseg.datasets.BaseSegDataset`.
        num_samples (int): How many samples to read. Defaults to 8.

    Raises:
        ValueError: naming the file, the problem and the fix.
    """
    name = type(dataset).__name__
    num_classes = len(dataset.metainfo['classes'])
    ignore = dataset.ignore_index
    reduce_zero = dataset.reduce_zero_label
    for idx in sample_indices(len(dataset), num_samples):
        info = dataset.get_data_info(idx)
        img = _open(info['img_path'], 'image', dataset)
        check_exif_orientation(info['img_path'], name)
        seg_path = info.get('seg_map_path')
        if not seg_path:
            continue
        mask = _open(seg_path, 'mask', dataset)
        if img.shape[:2] != mask.shape[:2]:
            raise ValueError(
                f'{name}: image {info["img_path"]} is {img.shape[1]}x{img.shape[0]} but '
                f'its mask {seg_path} is {mask.shape[1]}x{mask.shape[0]} (WxH); a mask '
                'must have its image\'s size. Re-export the mask at the image size.')
        if mask.ndim != 2:
            raise ValueError(
                f'{name}: mask {seg_path} has {mask.shape[2]} channels; masks are '
                f'single-channel index images: {_converter_hint(dataset)}.')
        values = np.unique(mask).astype(np.int64)
        if reduce_zero:
            values = np.where(values == 0, ignore, values - 1)
            values[values == ignore - 1] = ignore
        if num_classes == 2 and set(values.tolist()) == {0, ignore}:
            # Background and "ignore" only: almost always a 0/255 binary mask,
            # which would train no foreground pixel at all.
            raise ValueError(
                f'{name}: mask {seg_path} holds only 0 and {ignore}, but {ignore} is '
                f'ignore_index: this looks like a 0/255 binary mask, and its '
                f'foreground would be ignored (allowed values: [0, {num_classes}) ∪ '
                f'{{ignore_index={ignore}}}). Fix the masks: {_converter_hint(dataset)}. '
                'If such masks are intended, set StartupCheckHook num_samples=0.')
        bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore)]
        if bad:
            raise ValueError(
                f'{name}: mask {seg_path} has values {bad[:8]} outside [0, {num_classes}) '
                f'∪ {{ignore_index={ignore}}} for the {num_classes} classes '
                f'{tuple(dataset.metainfo["classes"])}. Fix the masks: '
                f'{_converter_hint(dataset)}.')


def _mask_problem(values: Sequence[int], num_classes: int, ignore: int,
                  allow_only_ignore: bool = False) -> Optional[str]:
    """Why a mask holding ``values`` is wrong for ``num_classes`` classes, or None."""
    if num_classes == 2 and not allow_only_ignore and set(values) == {0, ignore}:
        return (f'holds only 0 and {ignore}, but {ignore} is ignore_index: this looks like '
                'a 0/255 binary mask, and its foreground would be ignored')
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore)]
    if bad:
        return (f'has values {bad[:8]} outside [0, {num_classes}) ∪ '
                f'{{ignore_index={ignore}}}')
    return None


@TRANSFORMS.register_module()
class CheckSegSample(BaseTransform):
    """Check each loaded sample and name its files; put it right after ``LoadAnnotations``.

    Cheap per-sample versions of the start-up checks, for the samples the
    start-up sample did not read: the image has no EXIF orientation (see the
    module doc), the mask is single-channel, has the size of the image as
    loaded (``ori_shape``, so a ``Resize`` before ``LoadAnnotations`` in a
    test pipeline is fine) and, once the classes are known, holds only
    ``[0, num_classes)`` and ``ignore_index`` (values after
    ``reduce_zero_label``/``label_map``). The :class:`StartupCheckHook` sets
    ``num_classes``, ``ignore_index`` and ``dataset`` from each dataset when
    they are left None.

    Required keys: ``img_path``, ``ori_shape``; optional: ``gt_seg_map``,
    ``seg_map_path``. Modified keys: none.

    Args:
        num_classes (int, optional): Number of classes; None skips the value
            check until the start-up check fills it in. Defaults to None.
        ignore_index (int, optional): Ignored label. None means 255 (mmseg's
            default) unless the start-up check fills it in. Defaults to None.
        allow_only_ignore (bool): Accept binary masks holding only 0 and
            ``ignore_index`` (otherwise refused as 0/255 masks). Defaults to
            False.
        dataset (str, optional): Dataset name for the messages.
    """

    def __init__(self, num_classes: Optional[int] = None, ignore_index: Optional[int] = None,
                 allow_only_ignore: bool = False, dataset: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.allow_only_ignore = allow_only_ignore
        self.dataset = dataset

    def transform(self, results: dict) -> dict:
        name = self.dataset or 'CheckSegSample'
        img_path = results.get('img_path')
        if isinstance(img_path, str):
            check_exif_orientation(img_path, name)
        mask = results.get('gt_seg_map')
        if mask is None:
            return results
        seg_path = results.get('seg_map_path')
        if mask.ndim != 2:
            raise ValueError(
                f'{name}: mask {seg_path} has {mask.shape[2]} channels; masks are '
                'single-channel index images (0..K-1, 255 = ignore), e.g. '
                'np.asarray(Image.open(MASK).convert("L")) // 255 for a 0/255 binary mask.')
        height, width = results.get('ori_shape', mask.shape)[:2]
        if mask.shape[:2] != (height, width):
            raise ValueError(
                f'{name}: image {img_path} is {width}x{height} but its mask {seg_path} is '
                f'{mask.shape[1]}x{mask.shape[0]} (WxH); a mask must have its image\'s '
                'size. Re-export the mask at the image size.')
        if self.num_classes is not None:
            ignore = 255 if self.ignore_index is None else self.ignore_index
            counts = np.bincount(mask.ravel().astype(np.int64, copy=False))
            problem = _mask_problem(np.flatnonzero(counts).tolist(), self.num_classes,
                                    ignore, self.allow_only_ignore)
            if problem:
                raise ValueError(
                    f'{name}: mask {seg_path} {problem} (the {self.num_classes} classes '
                    'need index masks 0..K-1, 255 = ignore). Fix the mask, e.g. with the '
                    "dataset's converter in tools/dataset_converters"
                    + ('; if such masks are intended, set CheckSegSample '
                       'allow_only_ignore=True' if 'ignore_index:' in problem else '')
                    + '.')
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index}, '
                f'allow_only_ignore={self.allow_only_ignore})')


def configure_sample_checks(dataset) -> None:
    """Give the :class:`CheckSegSample` transforms of ``dataset`` its classes.

    Called by the start-up check for every dataset it checks; fields set in
    the config are kept.
    """
    transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', None) or []
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    for transform in transforms:
        if not isinstance(transform, CheckSegSample):
            continue
        if transform.num_classes is None and classes is not None:
            transform.num_classes = len(classes)
        if transform.ignore_index is None:
            transform.ignore_index = getattr(dataset, 'ignore_index', None)
        if transform.dataset is None:
            transform.dataset = type(dataset).__name__

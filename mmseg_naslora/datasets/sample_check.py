"""Start-up checks of a segmentation dataset's files, on a sample.

Bad data otherwise surfaces deep inside training: an unreadable image as
mmcv's ``failed to load image`` assertion, a 0/255 mask as a CUDA
device-side assert or a silently wrong loss, an image/mask size mismatch as a
shape error in a random crop. Reading a few evenly spaced samples at start-up
turns these into one error that names the file and the fix.
"""
import os.path as osp
from typing import Sequence

import numpy as np
from PIL import Image


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

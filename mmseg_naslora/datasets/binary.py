"""Shared base of the binary benchmark datasets.

Every binary benchmark of the Conv-LoRA / NAS-LoRA papers (skin lesions,
polyps, camouflaged objects, shadows, leaf disease, roads) is stored by
``tools/dataset_converters`` in the same mmseg layout: ``img_dir/{split}``
and ``ann_dir/{split}`` with single-channel PNG index masks (0 background,
1 foreground, 255 ignore). :class:`BinarySegDataset` holds what they share;
each benchmark subclasses it with its class names and file suffixes.
"""
from typing import List, Optional

import mmengine.fileio as fileio
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS


def check_converted_layout(dataset: BaseSegDataset,
                           converter: Optional[str]) -> None:
    """Fail early, naming the converter, when the converted data is absent.

    Args:
        dataset (BaseSegDataset): The dataset being loaded.
        converter (str, optional): Script in ``tools/dataset_converters``
            that writes the layout, named in the error message.
    """
    name = type(dataset).__name__
    how = (f'Convert the official release first: python tools/'
           f'dataset_converters/{converter} SRC -o DATA_ROOT, then set '
           f'data_root to DATA_ROOT.' if converter else
           'Check data_root and data_prefix.')
    for key in ('img_path', 'seg_map_path'):
        folder = dataset.data_prefix.get(key)
        if folder and not fileio.exists(folder,
                                        backend_args=dataset.backend_args):
            raise FileNotFoundError(
                f'{name}: data_prefix[{key!r}] = {folder} does not exist. '
                + how)


@DATASETS.register_module()
class BinarySegDataset(BaseSegDataset):
    """A binary segmentation dataset: background (0) and one foreground (1).

    Masks are index PNGs with 0 background, 1 foreground and 255 ignore, as
    written by ``tools/dataset_converters``. Background is a real class, so
    ``reduce_zero_label`` must stay False. Usable directly for any such data
    (pass ``img_suffix``); the benchmark subclasses fix the suffixes their
    converter writes and name their classes.

    Args:
        img_suffix (str): Image suffix. Defaults to '.jpg'.
        seg_map_suffix (str): Mask suffix. Defaults to '.png'.
        reduce_zero_label (bool): Must be False. Defaults to False.
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset`.
    """
    METAINFO = dict(
        classes=('background', 'foreground'),
        palette=[[0, 0, 0], [255, 255, 255]])
    # Script in tools/dataset_converters that writes this layout.
    CONVERTER: Optional[str] = None

    def __init__(self,
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False,
                 **kwargs) -> None:
        if reduce_zero_label:
            raise ValueError(
                f'{type(self).__name__} is binary: class 0 is the background '
                'class, so reduce_zero_label must be False.')
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=False,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        check_converted_layout(self, self.CONVERTER)
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(
                f'{type(self).__name__}: no "*{self.img_suffix}" images in '
                f'{self.data_prefix.get("img_path")} (ann_file='
                f'{self.ann_file!r}); is img_suffix right for this data?')
        return data_list

    def prepare_data(self, idx: int):
        """Run the pipeline, naming the files of a sample that fails to load."""
        try:
            return super().prepare_data(idx)
        except Exception as err:
            info = self.get_data_info(idx)
            raise RuntimeError(
                f'{type(self).__name__}: sample {idx} failed in the pipeline '
                f'(img_path={info.get("img_path")}, seg_map_path='
                f'{info.get("seg_map_path")}): {type(err).__name__}: {err}. If a file '
                'is corrupt or not an image, re-export it or remove it from the '
                'split.') from err

"""Configuration and data checks before the first iteration."""
import logging
from typing import Iterator, Optional

from mmengine.dataset import ConcatDataset, RepeatDataset
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ...datasets.sample_check import check_samples, configure_sample_checks
from ...utils.model import unwrap_model


def _leaf_datasets(dataset) -> Iterator:
    if isinstance(dataset, ConcatDataset):
        for sub in dataset.datasets:
            yield from _leaf_datasets(sub)
    elif isinstance(dataset, RepeatDataset) or hasattr(dataset, 'dataset'):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


@HOOKS.register_module()
class StartupCheckHook(Hook):
    """Refuse a bad config or bad data at start-up, before any checkpoint is written.

    ``before_train`` (and ``before_val``/``before_test`` for standalone
    evaluation) checks:

    - the training input size (``data_preprocessor.size``, else the
      ``RandomCrop`` crop size) is a multiple of the backbone's patch size
      (16 for SAM's ViT), which the encoder needs;
    - the decode head's ``num_classes`` equals the number of classes of
      every dataset (``dataset.metainfo['classes']``);
    - ``num_samples`` images and masks of each dataset decode, have the same
      size, carry no EXIF rotation and hold only valid class indices or
      ``ignore_index``
      (:func:`~mmseg_naslora.datasets.sample_check.check_samples`); every
      ``CheckSegSample`` transform of the pipelines learns the dataset's
      classes and ``ignore_index``, so each later sample is checked when it
      is loaded;
    - Conv-LoRA adapters under a segmentor that drops their gate's balance
      loss (a plain ``EncoderDecoder``) get a warning naming
      ``AdapterEncoderDecoder``.

    Args:
        num_samples (int): Samples read per dataset; 0 skips the file checks.
            Defaults to 8.
    """

    priority = 'VERY_HIGH'

    def __init__(self, num_samples: int = 8) -> None:
        self.num_samples = num_samples
        self._checked = set()

    @staticmethod
    def _model(runner):
        return unwrap_model(runner.model)

    def before_train(self, runner) -> None:
        self._check_input_size(runner)
        self._check_aux_losses(runner)
        self._check_data(runner, runner.train_dataloader.dataset, 'train_dataloader')
        # Validation data too: a bad val file would otherwise fail only after
        # the first checkpoints are written.
        if getattr(runner, '_val_loop', None) is not None:
            self._check_data(runner, runner.val_loop.dataloader.dataset, 'val_dataloader')

    def before_val(self, runner) -> None:
        self._check_data(runner, runner.val_dataloader.dataset, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check_data(runner, runner.test_dataloader.dataset, 'test_dataloader')

    def _check_input_size(self, runner) -> None:
        model = self._model(runner)
        patch = getattr(getattr(model, 'backbone', None), 'patch_size', None)
        if not isinstance(patch, int):
            return
        size = getattr(getattr(model, 'data_preprocessor', None), 'size', None)
        source = 'model.data_preprocessor.size'
        if size is None:
            size, source = self._crop_size(runner.cfg.get('train_dataloader', {})), \
                'the RandomCrop crop_size of train_dataloader'
        if size is None:
            return
        if any(int(s) % patch for s in size):
            raise ValueError(
                f'{source} = {tuple(size)} is not a multiple of {patch}, the patch size '
                f'of {type(model.backbone).__name__}. Set crop_size (and '
                'data_preprocessor.size) to multiples of 16, e.g. (1024, 1024) or '
                '(352, 480).')

    def _check_aux_losses(self, runner) -> None:
        """Warn when Conv-LoRA's balance loss would be dropped by the segmentor."""
        from ...models.adapters.conv_lora import ConvLoRA
        from ...models.segmentors.adapter_encoder_decoder import AdapterEncoderDecoder
        model = self._model(runner)
        if isinstance(model, AdapterEncoderDecoder) or \
                not any(isinstance(m, ConvLoRA) for m in model.modules()):
            return
        print_log(
            f'StartupCheckHook: the backbone has ConvLoRA adapters but the segmentor is '
            f'{type(model).__name__}, which never adds their gate\'s balance loss '
            "(loss_moe), so the expert gate gets no training signal. Use model=dict("
            "type='AdapterEncoderDecoder', ...) (as configs/_base_/models/"
            'sam_vit-b_convlora.py does).', logger='current', level=logging.WARNING)

    @staticmethod
    def _crop_size(loader_cfg) -> Optional[tuple]:
        dataset = (loader_cfg or {}).get('dataset') or {}
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        for transform in dataset.get('pipeline') or []:
            if isinstance(transform, dict) and transform.get('type') == 'RandomCrop':
                return tuple(transform['crop_size'])
        return None

    def _check_data(self, runner, dataset, key: str) -> None:
        head = getattr(self._model(runner), 'decode_head', None)
        num_classes = getattr(head, 'num_classes', None)
        for leaf in _leaf_datasets(dataset):
            if id(leaf) in self._checked:
                continue
            classes = leaf.metainfo.get('classes')
            if num_classes is not None and classes is not None and \
                    len(classes) != num_classes:
                raise ValueError(
                    f'model.decode_head.num_classes={num_classes} but {key}.dataset '
                    f'({type(leaf).__name__}) has {len(classes)} classes {tuple(classes)}. '
                    f'Set model.decode_head.num_classes={len(classes)} (binary heads: '
                    'num_classes=2, out_channels=1) or pass matching metainfo=dict('
                    'classes=...) to the dataset.')
            if self.num_samples > 0 and hasattr(leaf, 'get_data_info'):
                check_samples(leaf, self.num_samples)
            configure_sample_checks(leaf)
            self._checked.add(id(leaf))

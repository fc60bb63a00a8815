"""Adapter-only checkpoint files and adapter-config checks on loading."""
import logging
import os.path as osp
import re
from typing import Dict, List, Mapping, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ...checkpoint.adapter_file import (adapter_state_dict, check_adapter_tensors,
                                         describe_model, description_diff, save_adapters,
                                         set_strict)
from ...utils.model import unwrap_model


def _likely_cause(missing: List[str], loaded: Mapping) -> str:
    """Why a checkpoint lacks model weights, from the keys it does have."""
    if any(k.startswith(('image_encoder.', 'mask_decoder.', 'prompt_encoder.'))
           for k in loaded):
        return ('it is an official-format SAM file (image_encoder.*/mask_decoder.* '
                'keys), not a trained checkpoint: the config\'s checkpoint= already '
                'names the base SAM; pass the run\'s iter_N.pth or adapters.safetensors')
    swapped = [k for k in missing
               if re.sub(r'\.base_layer\.', '.', k) in loaded
               or k.replace('.qkv.', '.qkv.base_layer.') in loaded]
    if swapped:
        return ('adapted blocks store their frozen qkv as qkv.base_layer, and the '
                f'checkpoint has it for other blocks ({swapped[0]}): the config\'s '
                'adapter_blocks (or adapter) differ from the training config\'s; test '
                'with the config the checkpoint was trained with')
    return ('the checkpoint was written by another model config (head, adapter_blocks, '
            'adapter) or is not a training checkpoint; test with the config it was '
            'trained with')


@HOOKS.register_module()
class AdapterCheckpointHook(Hook):
    """Write ``adapters.safetensors`` next to every checkpoint; load it back safely.

    Saving: whenever mmengine's ``CheckpointHook`` saves, the trainable
    tensors of that checkpoint (see
    :func:`~mmseg_naslora.checkpoint.adapter_file.trainable_state_keys`) are
    written atomically to ``work_dir/filename`` once the ``.pth`` is on disk
    (this hook runs at the lowest priority, after the ``CheckpointHook``).
    The model's adapter config is also stamped into every checkpoint's meta.

    Loading (``after_load_checkpoint``, before mmengine loads the weights):

    - ``load_from='adapters.safetensors'`` (``tools/test.py CONFIG FILE``):
      the model completes the file from its base checkpoints as it loads
      it (:mod:`mmseg_naslora.checkpoint.adapter_file`), with or without
      this hook; the hook checks the file against the whole model first
      (mmengine's non-strict load would only log a mismatch in a module
      without base weights, e.g. an mmseg head), passes its ``strict`` on and
      refuses ``--resume`` from an adapter file (it has no optimizer state
      or iteration).
    - a ``.pth`` checkpoint (``--resume``, ``load_from``) whose stamped
      adapter config differs in meaning from the config's is refused: its
      tensors would not fit, or would silently be dropped.
    - at test/val time (the model was never initialised), a checkpoint that
      lacks weights of the model is refused, naming the keys and the likely
      cause (the SAM file instead of a trained checkpoint, another
      ``adapter_blocks``): they would be evaluated with random values.

    Args:
        filename (str): Adapter file name in ``work_dir``. Defaults to
            ``'adapters.safetensors'``.
        strict (bool): Refuse mismatches (base hash, arch, adapter config,
            missing tensors, weights missing at test time); False turns them
            into warnings. Defaults to True.
        save (bool): Write the adapter file. Defaults to True.
    """

    priority = 'LOWEST'

    def __init__(self, filename: str = 'adapters.safetensors', strict: bool = True,
                 save: bool = True) -> None:
        self.filename = filename
        self.strict = strict
        self.save = save
        self._pending: Optional[Dict[str, torch.Tensor]] = None
        self._source = ''

    def _model(self, runner):
        """The segmentor itself (inside a DDP wrapper or a TTA model too)."""
        model = unwrap_model(runner.model)
        if not hasattr(model, 'backbone') and hasattr(model, 'module'):
            model = model.module
        return model

    # Saving ---------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta['adapter_cfg'] = describe_model(runner.cfg.model)
        if self.save:
            self._pending = adapter_state_dict(self._model(runner), checkpoint['state_dict'])
            self._source = f'{runner.experiment_name}: epoch {meta.get("epoch")}, ' \
                           f'iter {meta.get("iter")}'

    def _flush(self, runner) -> None:
        if self._pending is None:
            return
        path = osp.join(runner.work_dir, self.filename)
        save_adapters(path, self._pending, runner.cfg.model, source=self._source)
        size = sum(t.numel() * t.element_size() for t in self._pending.values())
        print_log(f'AdapterCheckpointHook: wrote {len(self._pending)} trainable tensors '
                  f'({size / 2**20:.2f} MiB) to {path}', logger='current')
        self._pending = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._flush(runner)

    def after_train_epoch(self, runner) -> None:
        self._flush(runner)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._flush(runner)

    def after_train(self, runner) -> None:
        self._flush(runner)

    # Loading --------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') or {}
        if 'adapter_file' in meta:
            if getattr(runner, '_resume', False):
                raise ValueError(
                    f'cannot resume from the adapter file {meta["adapter_file"]!r}: it holds '
                    'weights only (no optimizer, scheduler or iteration). Use load_from (or '
                    'tools/test.py) for adapter files, and --resume with a .pth training '
                    'checkpoint.')
            check_adapter_tensors(self._model(runner), checkpoint['state_dict'],
                                  meta['adapter_file'], self.strict)
            set_strict(checkpoint['state_dict'], self.strict)
            return
        self._check_stamped_config(runner, meta.get('adapter_cfg'))
        self._check_complete(runner, checkpoint)

    def _check_stamped_config(self, runner, stamped: Optional[Mapping]) -> None:
        """Refuse a checkpoint stamped with another adapter/backbone config."""
        if stamped is None:
            return
        own = describe_model(runner.cfg.model)
        diff = [f'model.backbone.{k if k != "backbone" else "type"}: checkpoint has '
                f'{stamped.get(k)}, config has {own[k]}'
                for k in description_diff(stamped, own)]
        if not diff:
            return
        action = 'resume from' if getattr(runner, '_resume', False) else 'load'
        source = getattr(runner, '_load_from', None) or \
            f'the last checkpoint in {runner.work_dir}'
        msg = (f'cannot {action} this checkpoint ({source}): it was trained with another adapter/'
               'backbone config:\n  ' + '\n  '.join(diff)
               + '\nfix: use the config the checkpoint was trained with, or start a '
               'new work_dir (--work-dir) instead of --resume.')
        if self.strict:
            raise ValueError(msg)
        print_log(msg, logger='current', level=logging.WARNING)

    def _check_complete(self, runner, checkpoint: dict) -> None:
        """Refuse a checkpoint that leaves weights of an uninitialised model random.

        At test/val time ``init_weights`` never runs, so every model weight
        the checkpoint lacks keeps its random initial value and the
        evaluation scores a partly random model (e.g. the SAM file passed
        instead of a trained checkpoint, or another ``adapter_blocks``, which
        moves a frozen qkv weight to ``qkv.base_layer``). In training the
        missing weights come from the base checkpoints, so this is skipped.
        """
        model = self._model(runner)
        if getattr(model, 'is_init', False):
            return
        loaded = {re.sub(r'^module\.', '', k): v
                  for k, v in (checkpoint.get('state_dict') or checkpoint).items()}
        missing = sorted(k for k in model.state_dict()
                         if k not in loaded and not k.endswith('num_batches_tracked'))
        if not missing:
            return
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        msg = (f'{source} lacks {len(missing)} weight(s) of the model, which would be '
               f'evaluated with random values: {", ".join(missing[:6])}'
               + (f' and {len(missing) - 6} more' if len(missing) > 6 else '')
               + '.\nlikely cause: '
               + _likely_cause(missing, loaded) + '.')
        if self.strict:
            raise ValueError(msg)
        print_log(msg + ' (strict=False: evaluating anyway)', logger='current',
                  level=logging.WARNING)

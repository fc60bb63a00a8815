"""Adapter-only checkpoint files and adapter-config checks on loading."""
import logging
import os.path as osp
from typing import Dict, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ...models.utils.adapter_io import (adapter_state_dict, describe_model,
                                        load_adapters, save_adapters)
from ...utils.model import unwrap_model


@HOOKS.register_module()
class AdapterCheckpointHook(Hook):
    """Write ``adapters.safetensors`` next to every checkpoint; load it back safely.

    Saving: whenever mmengine's ``CheckpointHook`` saves, the trainable
    tensors of that checkpoint (see
    :func:`~mmseg_naslora.models.utils.adapter_io.trainable_state_keys`) are
    written atomically to ``work_dir/filename`` once the ``.pth`` is on disk
    (this hook runs at the lowest priority, after the ``CheckpointHook``).
    The model's adapter config is also stamped into every checkpoint's meta.

    Loading (``after_load_checkpoint``):

    - ``load_from='adapters.safetensors'`` (``tools/test.py CONFIG FILE``):
      the base SAM weights named by the config are loaded first if the model
      was not initialised (test/val), then the file is checked against the
      config (backbone, arch, adapter, base sha256) and loaded.
    - a ``.pth`` checkpoint (``--resume``, ``load_from``) whose stamped
      adapter config differs from the config's is refused: its tensors
      would not fit, or would silently be dropped.

    Args:
        filename (str): Adapter file name in ``work_dir``. Defaults to
            ``'adapters.safetensors'``.
        strict (bool): Refuse mismatches (base hash, arch, adapter config,
            missing tensors); False turns them into warnings. Defaults to True.
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

    @staticmethod
    def _target(runner):
        """The module mmengine saves and loads (a DDP wrapper's ``module``)."""
        return unwrap_model(runner.model)

    def _model(self, runner):
        """The segmentor itself (inside a ``SegTTAModel`` too)."""
        model = self._target(runner)
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
            self._load_adapter_file(runner, checkpoint, meta['adapter_file'])
            return
        stamped = meta.get('adapter_cfg')
        if stamped is None:
            return
        own = describe_model(runner.cfg.model)
        diff = [f'model.backbone.{k if k != "backbone" else "type"}: checkpoint has '
                f'{stamped.get(k)}, config has {own[k]}'
                for k in own if stamped.get(k) != own[k]]
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

    def _load_adapter_file(self, runner, checkpoint: dict, path: str) -> None:
        if getattr(runner, '_resume', False):
            raise ValueError(
                f'cannot resume from the adapter file {path!r}: it holds weights only '
                '(no optimizer, scheduler or iteration). Use load_from (or tools/test.py) '
                'for adapter files, and --resume with a .pth training checkpoint.')
        target, model = self._target(runner), self._model(runner)
        if not getattr(model, 'is_init', False):
            # test/val never call init_weights: load the base SAM weights first.
            model.init_weights()
        model_cfg = runner.cfg.model
        if 'backbone' not in model_cfg and 'module' in model_cfg:  # SegTTAModel
            model_cfg = model_cfg['module']
        load_adapters(model, path, model_cfg, strict=self.strict)
        print_log(f'AdapterCheckpointHook: loaded adapters from {path} onto the base '
                  'weights of the config', logger='current')
        # The model is complete now; hand mmengine a full, matching state dict.
        checkpoint['state_dict'] = target.state_dict()
        checkpoint['meta'] = dict(checkpoint['meta'],
                                  adapter_cfg=describe_model(runner.cfg.model))

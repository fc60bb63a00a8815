"""The reliability hooks every run gets, from a stock mmseg/mim runner too.

Every schedule in ``configs/`` lists them in its ``default_hooks`` (the
schedules own ``default_hooks`` in mmseg's layout, and mmengine refuses a
key that two sibling ``_base_`` files define, so they cannot live in one
shared base). :data:`RELIABILITY_HOOKS` is the same dict for configs written
elsewhere: ``tools/train.py`` and ``tools/test.py`` add whatever a config
lacks, and ``tests/test_configs/test_config_zoo.py`` keeps the schedules in
step with it. In ``tools/train.py`` a config turns one off with e.g.
``default_hooks = dict(adapter_checkpoint=None)`` (a stock runner accepts
None only for mmengine's own hook names) and tunes one with
``default_hooks = dict(adapter_checkpoint=dict(strict=False))`` or
``--cfg-options default_hooks.adapter_checkpoint.strict=False``.

The schedules' ``CheckpointHook`` also saves through the atomic storage
backend (:data:`~mmseg_naslora.checkpoint.mmengine_io.ATOMIC_BACKEND_ARGS`);
:func:`add_reliability_hooks` sets it on a checkpoint hook that names no
backend.
"""
import copy

from mmengine.config import Config

from ..checkpoint.mmengine_io import ATOMIC_BACKEND_ARGS

RELIABILITY_HOOKS = dict(
    work_dir_guard=dict(type='WorkDirGuardHook'),
    startup_check=dict(type='StartupCheckHook', num_samples=8),
    nonfinite_loss=dict(type='NonFiniteLossHook'),
    adapter_checkpoint=dict(type='AdapterCheckpointHook'),
    resume_lr=dict(type='ResumeLrHook'),
)


def add_reliability_hooks(cfg: Config) -> None:
    """Add :data:`RELIABILITY_HOOKS` to ``cfg.default_hooks`` where not set.

    An entry the config sets to None is removed (mmengine accepts None only
    for its own default hook names); an entry without ``type`` updates the
    default's arguments. A checkpoint hook without ``backend_args`` (or
    mmengine's default one) gets the atomic backend; one with a remote
    ``out_dir`` or ``file_client_args`` loses the schedules' atomic backend.
    """
    hooks = cfg.get('default_hooks')
    if hooks is None:
        cfg.default_hooks = {}
        hooks = cfg.default_hooks  # Config stores its own ConfigDict copy
    for name, hook in RELIABILITY_HOOKS.items():
        if name not in hooks:
            hooks[name] = copy.deepcopy(hook)
        elif hooks[name] is None:
            hooks.pop(name)
        elif 'type' not in hooks[name]:
            # e.g. --cfg-options default_hooks.adapter_checkpoint.strict=False
            hooks[name] = dict(copy.deepcopy(hook), **hooks[name])
    checkpoint = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))  # mmengine's
    if checkpoint is None:
        return
    # The atomic backend writes local files; a remote out_dir or the legacy
    # file_client_args need mmengine's own choice of backend.
    elsewhere = '://' in str(checkpoint.get('out_dir') or '') \
        or bool(checkpoint.get('file_client_args'))
    backend = checkpoint.get('backend_args')
    if elsewhere and backend == ATOMIC_BACKEND_ARGS:
        hooks['checkpoint'] = dict(checkpoint, backend_args=None)
    elif not elsewhere and not backend:
        hooks['checkpoint'] = dict(checkpoint, backend_args=copy.deepcopy(ATOMIC_BACKEND_ARGS))

"""Lock the work dir of a training run and resume from its own newest checkpoint."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner.loops import BaseLoop
from mmseg.registry import HOOKS

from ..work_dir import prepare_train_work_dir, unlock_work_dir


@HOOKS.register_module()
class WorkDirGuardHook(Hook):
    """:func:`~mmseg_naslora.engine.work_dir.prepare_train_work_dir` for any runner.

    ``tools/train.py`` does the same before it builds the runner (so a
    refused run writes nothing, not even a config dump); this hook gives a
    stock mmengine/mmseg ``Runner`` the same guarantees. It acts in
    ``before_run`` of ``train()``, which mmengine calls before it loads or
    resumes a checkpoint: the lock is taken (rank 0), ``resume=True`` without
    ``load_from`` is pointed at the newest checkpoint of the work dir itself
    (mmengine would trust the absolute path in ``last_checkpoint``, or train
    from scratch), and a new run over existing checkpoints is refused. The
    lock is released in ``after_run``.

    Args:
        overwrite (bool): Let a run without ``resume`` replace the
            checkpoints of an earlier run. Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._locked = None

    def before_run(self, runner) -> None:
        # val()/test() call before_run too; only a built train loop means training.
        if not isinstance(getattr(runner, '_train_loop', None), BaseLoop) or \
                self._locked is not None:
            return
        resume_from = prepare_train_work_dir(
            runner.work_dir, resume=runner._resume, load_from=runner._load_from,
            overwrite=self.overwrite)
        self._locked = runner.work_dir
        if resume_from is not None:
            print_log(f'WorkDirGuardHook: resuming from {resume_from}, the newest checkpoint '
                      f'in {runner.work_dir}', logger='current')
            runner._load_from = resume_from  # mmengine resumes from load_from if set

    def after_run(self, runner) -> None:
        if self._locked is not None:
            unlock_work_dir(self._locked)
            self._locked = None

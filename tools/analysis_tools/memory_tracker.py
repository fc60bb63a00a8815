"""Exact tensor-memory accounting of a training step, on real or fake tensors.

:class:`StorageTracker` counts every live tensor storage by kind (parameters,
gradients, optimiser state, activations, ...) and records the peak, which is
what ``torch.cuda.max_memory_allocated`` reports for the same step. Run under
``torch._subclasses.fake_tensor.FakeTensorMode`` together with
:class:`AllValidMode`, it gives the peak of a 1024² ViT-H step on a laptop:
fake tensors only carry shapes, so nothing is allocated or computed.
``fake_memory.py`` (a training step) and ``benchmark_loss.py`` (a loss) beside it use it.
"""
import weakref
from collections import OrderedDict
from functools import partial
from typing import Dict, Iterable, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

#: Granularity of the CUDA caching allocator (``kMinBlockSize`` in
#: c10/cuda/CUDACachingAllocator.cpp): every allocation is rounded up to it.
CUDA_BLOCK_BYTES = 512
#: What a live storage is counted as, in the order of the JSON split.
MEMORY_KINDS = ('params', 'buffers', 'inputs', 'grads', 'optimizer', 'activations',
                'temporaries')


class StorageTracker(TorchDispatchMode):
    """Bytes of live tensor storages by kind, and the split at their peak.

    The mode sees every op output below autograd: a storage it has not seen
    is counted until its Python object dies (weakref callback), so views and
    in-place ops add nothing, and activations leave the sum when autograd
    frees them. What exists before is registered by :meth:`start`.

    Kinds: ``params``, ``buffers`` and ``inputs`` (the batch), registered up
    front; ``optimizer`` (what ``optimizer.state`` holds after a step; the
    0-dim ``step`` counters count 0 bytes, as they stay on the host for CUDA
    parameters); ``grads`` (moved there by a post-accumulate-grad hook);
    ``activations`` (outputs of the forward) and ``temporaries`` (outputs of
    the backward and the optimiser step, including the activations that
    checkpointing recomputes).

    Args:
        block (int): Round every storage up to a multiple of this many bytes
            (1: the exact tensor bytes). Defaults to :data:`CUDA_BLOCK_BYTES`.
    """

    def __init__(self, block: int = CUDA_BLOCK_BYTES) -> None:
        super().__init__()
        self.block = block
        # id(storage) -> [weakref, kind, counted bytes, on the host]
        self._live: Dict[int, list] = {}
        self.current = OrderedDict((k, 0) for k in MEMORY_KINDS)
        self.most = OrderedDict(self.current)  # each kind's own maximum
        self.total = self.peak = 0
        self.at_peak = OrderedDict(self.current)
        self.peak_phase: Optional[str] = None
        self.in_optimizer = False
        self._handles: list = []

    def add(self, tensor: torch.Tensor, kind: str, host: bool = False) -> None:
        """Count ``tensor``'s storage as ``kind`` (re-label it if counted)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is None:
            ref = weakref.ref(storage, partial(self._free, key))
            self._live[key] = entry = [ref, kind, 0, host]
        elif entry[1] != kind:
            self.current[entry[1]] -= entry[2]
            self.current[kind] += entry[2]
            entry[1] = kind
        nbytes = 0 if entry[3] else -(-storage.nbytes() // self.block) * self.block
        if nbytes != entry[2]:  # new, or resized by an out= op
            self.current[kind] += nbytes - entry[2]
            self.total += nbytes - entry[2]
            entry[2] = nbytes
        self.most[kind] = max(self.most[kind], self.current[kind])

    def _free(self, key: int, _ref) -> None:
        _, kind, nbytes, _ = self._live.pop(key)
        self.current[kind] -= nbytes
        self.total -= nbytes

    def _phase(self) -> str:
        if self.in_optimizer:
            return 'optimizer'
        return 'backward' if torch._C._current_graph_task_id() != -1 else 'forward'

    def _output(self, tensor: torch.Tensor) -> None:
        entry = self._live.get(id(tensor.untyped_storage()))
        if entry is not None:
            self.add(tensor, entry[1])  # seen: only its size may have changed
        else:
            self.add(tensor, 'activations' if self._phase() == 'forward' else 'temporaries')

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._output, out)
        if self.total > self.peak:
            self.peak, self.at_peak, self.peak_phase = (self.total, OrderedDict(self.current),
                                                        self._phase())
        return out

    def start(self, model: torch.nn.Module, optimizers: List[torch.optim.Optimizer],
              inputs: Iterable[torch.Tensor]) -> 'StorageTracker':
        """Register what exists now and install the hooks; enter it next."""
        from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                           register_optimizer_step_pre_hook)

        for param in model.parameters():
            self.add(param, 'params')
            if param.requires_grad:  # α too: it is frozen only inside a step
                self._handles.append(param.register_post_accumulate_grad_hook(
                    lambda p: self.add(p.grad, 'grads')))
        for buffer in model.buffers():
            self.add(buffer, 'buffers')
        for value in inputs:
            self.add(value, 'inputs')

        def register_state(opt: torch.optim.Optimizer) -> None:
            for state in opt.state.values():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        self.add(value, 'optimizer', host=name == 'step' and value.dim() == 0)

        def pre_step(opt, _args, _kwargs):
            self.in_optimizer = True

        def post_step(opt, _args, _kwargs):
            register_state(opt)
            self.in_optimizer = False

        for opt in optimizers:
            register_state(opt)
        self._handles += [register_optimizer_step_pre_hook(pre_step),
                          register_optimizer_step_post_hook(post_step)]
        self.peak, self.at_peak = self.total, OrderedDict(self.current)
        self.most = OrderedDict(self.current)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return super().__exit__(*exc)


class AllValidMode(TorchDispatchMode):
    """Answers the data-dependent ops of fake tensors, which have no values.

    * boolean-mask indexing selects every element, and a bool scalar is
      ``True``, except that of ``any()``, which is ``False`` (nothing
      flagged: rejection-sampling loops such as ``trunc_normal_`` end);
      other scalars are 1. Here that is exact: mmseg's loss reads the
      label checks and the count of non-ignored pixels, and the random
      masks have no ignored pixel; no size depends on the values read.
    * ``nonzero`` selects every element: an upper bound, counted in
      :attr:`nonzero_calls` (Conv-LoRA's routing: every expert is charged
      every sample, where a real step runs ``top_k`` of them per sample).

    ``nonzero``'s index tensor inside a real boolean ``index`` is an
    op-internal workspace and is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.weak import WeakIdKeyDictionary
        self._any_outputs = WeakIdKeyDictionary()
        self.nonzero_calls = 0

    @staticmethod
    def _is_mask(index: Optional[torch.Tensor]) -> bool:
        return index is not None and index.dtype in (torch.bool, torch.uint8)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        kwargs = kwargs or {}
        if func is aten.index.Tensor and any(self._is_mask(i) for i in args[1]):
            indices = []
            for index in args[1]:
                if self._is_mask(index):  # all selected: one index per mask dim
                    indices += [torch.empty(index.numel(), dtype=torch.long,
                                            device=index.device)] * index.dim()
                else:
                    indices.append(index)
            return func(args[0], indices)
        if func is aten.nonzero.default:
            self.nonzero_calls += 1
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        if func is aten._local_scalar_dense.default:
            x = args[0]
            if x.dtype == torch.bool:
                return x not in self._any_outputs
            return 1. if x.is_floating_point() else 1
        out = func(*args, **kwargs)
        if func.overloadpacket is aten.any:
            self._any_outputs[out] = True
        return out

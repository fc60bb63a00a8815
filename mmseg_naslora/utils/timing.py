"""Wall-clock timing of callables that take turns, for latency comparisons."""
import time
from typing import Callable, List, Sequence

import torch


def timed_in_turns(fns: Sequence[Callable[[], object]],
                   repeat: int,
                   warmup: int = 1,
                   device: str = 'cpu') -> List[List[float]]:
    """Seconds of each of ``repeat`` calls of every function, the functions taking turns.

    Timed in turns, load from other processes and drifting allocator or cache
    state hit every function alike, so their ratio holds where timing each
    one separately would differ by far more than the few percent compared.

    Args:
        fns (Sequence[callable]): Functions of no argument.
        repeat (int): Timed calls of each (at least 1).
        warmup (int): Untimed calls of each, in turns, before them.
            Defaults to 1.
        device (str): Where the work runs; a CUDA device is synchronised
            around every call. Defaults to ``'cpu'``.

    Returns:
        list[list[float]]: One list of ``repeat`` durations per function.
    """
    cuda = str(device).startswith('cuda')

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in fns:
            fn()
    sync()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(max(repeat, 1)):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync()
            spent.append(time.perf_counter() - start)
    return times

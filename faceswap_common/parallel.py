"""Ordered parallel map over worker processes, with a per-worker state and a progress bar."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

_STATE: object = None


def _init(factory: Callable[[], object]) -> None:
    global _STATE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _STATE = factory()


def _call(args: tuple[Callable[[object, T], R], T]) -> R:
    fn, item = args
    return fn(_STATE, item)


def pmap(fn: Callable[[object, T], R], items: Iterable[T], factory: Callable[[], object], workers: int,
         total: int | None = None, desc: str = "", chunksize: int = 4) -> Iterator[R]:
    """Yield fn(state, item) in order; `state = factory()` is built once per worker process.

    `fn` and `factory` must be module-level functions (picklable). workers=1 runs in-process.
    Workers are spawned, not forked: a parent that already runs torch/mediapipe threads can
    deadlock a forked child.
    """
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5,
               disable=os.environ.get("FACESWAP_NO_PROGRESS") == "1")
    try:
        if workers <= 1:
            state = factory()
            for item in items:
                yield fn(state, item)
                bar.update(1)
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init, initargs=(factory,)) as pool:
            for r in pool.imap(_call, ((fn, it) for it in items), chunksize=chunksize):
                yield r
                bar.update(1)
    finally:
        bar.close()

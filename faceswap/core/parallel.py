"""Ordered parallel map over worker processes, with a per-worker state and a progress bar.

One pool of spawned workers lives for the whole process and is reused by every stage that runs in
it (the Prefect flow and the bench run all data stages in one process): spawning a worker and
importing numpy/OpenCV/dlib/torch costs about 1-2 s, which would otherwise be paid per stage.
Each worker keeps one state per factory (a detector, a landmarker, ...), built on first use.
Batches too small to repay the start-up run in-process.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

ORPHAN_POLL_S = 0.2  # how soon a worker whose parent died exits
MIN_ITEMS_FOR_POOL = 24  # below this, starting workers costs more than it saves (measured: ~1.5 s/worker)

_STATES: dict[bytes, object] = {}  # in each worker: factory key -> state
_POOL: tuple[int, mp.pool.Pool] | None = None  # in the parent: (workers, pool)


def worker_setup() -> None:
    """In a worker: one compute thread (the parallelism is the processes)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class _OrphanQuietStream:
    """A worker's stderr that goes silent once its parent is gone: a killed stage's workers then
    exit without the BrokenPipe tracebacks of results they could no longer send."""

    def __init__(self, stream, parent: int) -> None:
        self._stream, self._parent = stream, parent

    def write(self, text: str) -> int:
        return len(text) if os.getppid() != self._parent else self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _exit_when_orphaned(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(0)


def _pool_worker_setup(parent: int) -> None:
    """Pool initializer: single-threaded, and quiet + gone within ORPHAN_POLL_S when the parent dies
    (kill -9 leaves no one to terminate the pool)."""
    worker_setup()
    sys.stderr = _OrphanQuietStream(sys.stderr, parent)
    threading.Thread(target=_exit_when_orphaned, args=(parent, ORPHAN_POLL_S), daemon=True,
                     name="orphan-watch").start()


def _call(args: tuple[bytes, Callable[[], object], Callable[[object, T], R], T]) -> R:
    key, factory, fn, item = args
    if key not in _STATES:
        _STATES[key] = factory()
    return fn(_STATES[key], item)


def _pool(workers: int) -> mp.pool.Pool:
    """The process-wide pool with `workers` processes (rebuilt if a different size is asked for)."""
    global _POOL
    if _POOL is not None and _POOL[0] != workers:
        shutdown()
    if _POOL is None:
        _POOL = (workers, mp.get_context("spawn").Pool(workers, initializer=_pool_worker_setup,
                                                        initargs=(os.getpid(),)))
    return _POOL[1]


def shutdown() -> None:
    """Stop the shared pool (called at exit; safe to call twice)."""
    global _POOL
    if _POOL is not None:
        _POOL[1].terminate()
        _POOL[1].join()
        _POOL = None


atexit.register(shutdown)


def progress_bar(total: int | None, desc: str) -> tqdm:
    """The data stages' progress bar (images); off when FACESWAP_NO_PROGRESS=1."""
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5,
                disable=os.environ.get("FACESWAP_NO_PROGRESS") == "1")


def pmap(fn: Callable[[object, T], R], items: Iterable[T], factory: Callable[[], object], workers: int,
         total: int | None = None, desc: str = "", chunksize: int = 4) -> Iterator[R]:
    """Yield fn(state, item) in order; `state = factory()` is built once per worker process.

    `fn` and `factory` must be picklable (module-level functions, functools.partial of them).
    workers=1, or fewer than MIN_ITEMS_FOR_POOL items (when `total` is known), runs in-process.
    Workers are spawned, not forked: a parent that already runs torch/mediapipe threads can
    deadlock a forked child.
    """
    bar = progress_bar(total, desc)
    try:
        if workers <= 1 or (total is not None and total < MIN_ITEMS_FOR_POOL):
            state: list[object] = []  # built on the first item only: nothing to do, no start-up
            for item in items:
                if not state:
                    state.append(factory())
                yield fn(state[0], item)
                bar.update(1)
            return
        key = pickle.dumps(factory)
        for r in _pool(workers).imap(_call, ((key, factory, fn, it) for it in items), chunksize=chunksize):
            yield r
            bar.update(1)
    finally:
        bar.close()

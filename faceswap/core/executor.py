"""Where a data stage's per-image work runs: this machine's process pool or Ray Data (`prep.executor`).

`map_items(fn, items, factory, workers, prep)` yields `fn(state, item)` for every item, in order,
with `state = factory()` built once per worker. The stages call it the same way for both executors,
so outputs, reject reasons and incremental behaviour do not depend on the executor
(tests/test_executor.py compares them row for row):
  * `local`: faceswap.core.parallel.pmap, `workers` spawned processes.
  * `ray`: `ray.data.from_items(...).map_batches(ItemMapper, compute=ActorPoolStrategy(size=workers))`,
    an actor pool whose actors each build the state (the detector, landmarker or parser) once; `use_gpu` gives
    GPU-model stages `gpu_actors` actors with one GPU each. Results stream back to the driver as
    they finish, so the stage saves its progress during the run with either executor.
Items and results cross the boundary pickled (plain dicts, tuples and strings: paths, not pixels;
every worker reads the images from storage it shares with the driver).
"""
from __future__ import annotations

import logging
import math
import pickle
import warnings
from typing import Callable, Iterator, Sequence, TypeVar

from faceswap.core.config import PrepConfig
from faceswap.core.parallel import pmap, progress_bar, worker_setup

T = TypeVar("T")
R = TypeVar("R")

ACTOR_RETRIES = 3  # restarts of a lost actor (and retries of its batch) before the stage fails
MAX_BLOCKS = 4096  # Ray Data blocks per stage: about one batch each, bounded for millions of images


def map_items(fn: Callable, items: Sequence[T], factory: Callable[[], object], workers: int,
              prep: PrepConfig | None = None, *, desc: str = "", gpu: bool = False,
              batched: int | None = None) -> Iterator[R]:
    """Yield fn(state, item) in item order on `prep.executor` (local when prep is None).

    gpu: the state holds a GPU-capable model (RetinaFace, BiSeNet): with ray + use_gpu its actors take
    a GPU. batched=N: `fn(state, items) -> results` takes lists of up to N items (a model that batches);
    the local executor then runs it in this process, as one model in one process uses every core.
    """
    if prep is not None and prep.executor == "ray":
        yield from _ray_map(fn, items, factory, workers, prep, desc, gpu, batched)
        return
    if batched:
        yield from _batched_in_process(fn, items, factory, batched, desc)
        return
    yield from pmap(fn, items, factory, workers, total=len(items), desc=desc)


def _batched_in_process(fn, items, factory, size, desc) -> Iterator:
    if not items:
        return
    state = factory()
    with progress_bar(len(items), desc) as bar:
        for i in range(0, len(items), size):
            for r in fn(state, list(items[i:i + size])):
                yield r
                bar.update(1)


class ItemMapper:
    """A Ray Data actor: builds the stage's state once, then maps pickled items to pickled results."""

    def __init__(self, factory: Callable[[], object], fn: Callable, batched: bool) -> None:
        worker_setup()
        self.state, self.fn, self.batched = factory(), fn, batched

    def __call__(self, batch: dict) -> dict:
        items = [pickle.loads(b) for b in batch["item"]]
        results = self.fn(self.state, items) if self.batched else [self.fn(self.state, it) for it in items]
        return {"i": batch["i"], "result": [pickle.dumps(r) for r in results]}


def _ray_map(fn, items, factory, workers, prep: PrepConfig, desc, gpu, batched) -> Iterator:
    if not items:
        return
    import ray.data

    from faceswap.core import ray_env

    use_gpu = gpu and prep.use_gpu
    ray_env.connect(prep.ray_address, num_cpus=workers, num_gpus=None if prep.use_gpu else 0,
                    object_store_mb=prep.object_store_mb)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts finished items (and Ray's warning that its own are off: quiet)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-stage execution-plan lines
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # about one batch per block, and at least one block per actor so that every actor gets work
    blocks = min(len(items), MAX_BLOCKS, max(math.ceil(len(items) / (batched or prep.batch_size)), workers))
    size = min(batched or prep.batch_size, math.ceil(len(items) / blocks))
    ds = ray.data.from_items([{"i": i, "item": pickle.dumps(it)} for i, it in enumerate(items)],
                             override_num_blocks=blocks)
    # A lost actor (a node gone) is restarted and its batch retried, ACTOR_RETRIES times, not Ray Data's
    # default of forever: an image that crashes its actor every time then fails the stage, whose saved
    # progress the re-run keeps. The driver logs once per stage that the actor's constructor arguments
    # live in the object store (ray-project/ray#53727); the stage holds them until it ends.
    # (Ray 2.60 warns that such remote args are deprecated, to go in 2.64; requirements.txt pins 2.60.)
    pool = ray.data.ActorPoolStrategy(size=prep.gpu_actors if use_gpu else workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(ItemMapper, fn_constructor_args=(factory, fn, bool(batched)), batch_size=size,
                            batch_format="numpy", compute=pool, num_cpus=1, num_gpus=1 if use_gpu else 0,
                            max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES)
    done: dict[int, R] = {}  # finished out of order, waiting for an earlier item
    following = 0
    with progress_bar(len(items), desc) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, r in zip(batch["i"], batch["result"]):
                done[int(i)] = pickle.loads(r)
                bar.update(1)
            while following in done:
                yield done.pop(following)
                following += 1
    if following != len(items):
        raise RuntimeError(f"{desc}: Ray Data returned {following} of {len(items)} results")

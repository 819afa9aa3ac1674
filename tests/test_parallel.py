"""The worker pool keeps order, builds state once per worker, is shared by successive stages,
survives a busy parent, and small batches stay in-process."""
from __future__ import annotations

import functools
import os

from faceswap.core.parallel import MIN_ITEMS_FOR_POOL, pmap


def _factory(tag="a"):
    return (tag, os.getpid())


def _work(state, x):
    tag, pid = state
    return x * x, pid, tag, os.getpid()


def test_pmap_two_workers_keeps_order_after_threads_started():
    import torch  # a parent with torch's thread pool running must not deadlock its workers

    torch.ones(64, 64) @ torch.ones(64, 64)
    n = MIN_ITEMS_FOR_POOL + 16
    out = list(pmap(_work, range(n), _factory, workers=2, total=n))
    assert [v for v, *_ in out] == [x * x for x in range(n)]
    pids = {pid for _, pid, _, _ in out}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(state_pid == pid for _, state_pid, _, pid in out)  # state built in the worker using it

    # A second call (next stage) reuses the same worker processes, with its own state per factory
    # (compared with the pool's processes: on a loaded machine one worker may take every item of a call).
    from faceswap.core import parallel

    pool_pids = {p.pid for p in parallel._POOL[1]._pool}
    assert pids <= pool_pids
    out2 = list(pmap(_work, range(n), functools.partial(_factory, "b"), workers=2, total=n))
    assert {pid for *_, pid in out2} <= pool_pids
    assert {tag for _, _, tag, _ in out2} == {"b"}


def test_small_batches_and_one_worker_run_in_process():
    for workers, n in ((2, MIN_ITEMS_FOR_POOL - 1), (1, 50)):
        out = list(pmap(_work, range(n), _factory, workers=workers, total=n))
        assert {pid for *_, pid in out} == {os.getpid()}
        assert [v for v, *_ in out] == [x * x for x in range(n)]


def test_no_items_builds_no_state():
    def boom():
        raise AssertionError("factory must not run without items")

    assert list(pmap(_work, [], boom, workers=2, total=0)) == []

"""The worker pool keeps order, builds state once per worker, and survives a busy parent."""
from __future__ import annotations

from faceswap_common.parallel import pmap


def _factory():
    import os
    return os.getpid()


def _work(pid, x):
    return x * x, pid


def test_pmap_two_workers_keeps_order_after_threads_started():
    import torch  # a parent with torch's thread pool running must not deadlock its workers

    torch.ones(64, 64) @ torch.ones(64, 64)
    out = list(pmap(_work, range(20), _factory, workers=2, total=20))
    assert [v for v, _ in out] == [x * x for x in range(20)]
    assert 1 <= len({pid for _, pid in out}) <= 2

"""bench.train's step profile: the forward timer measures what each named module costs and unhooks."""
from __future__ import annotations

import time

import torch

from bench.train import ForwardTimer


class Sleeper(torch.nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_forward_timer_measures_each_module_and_unhooks():
    slow, fast = Sleeper(0.05), Sleeper(0.0)
    timer = ForwardTimer({"slow": slow, "fast": fast})
    x = torch.zeros(1)
    slow(x)
    timer.reset()  # what the warm-up steps cost is not counted
    for _ in range(2):
        fast(slow(x))
    timer.close()
    assert timer.calls == {"slow": 2, "fast": 2}
    assert 0.1 <= timer.seconds["slow"] < 0.5 and timer.seconds["fast"] < 0.05
    slow(x)  # hooks removed: no more counting
    assert timer.calls["slow"] == 2

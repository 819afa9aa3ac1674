"""Shared fixtures for the faceswap_models tests (tiny configs, CPU, 1 thread)."""
from __future__ import annotations

import pytest
import torch

from faceswap_models.config import FlowFaceConfig


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> FlowFaceConfig:
    return FlowFaceConfig.tiny()

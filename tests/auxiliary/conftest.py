"""Shared fixtures: converted FaceNet weights cached once per session, face images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from faceswap_models.auxiliary import FaceNetEncoder, ensure_facenet_weights


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def facenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_facenet_weights(tmp_path_factory.mktemp("aux_cache"))


@pytest.fixture(scope="session")
def facenet(facenet_weights: Path) -> FaceNetEncoder:
    return FaceNetEncoder(facenet_weights)


@pytest.fixture(scope="session")
def astronaut_face() -> np.ndarray:
    """160x160 RGB uint8 crop of the face in skimage's astronaut photo (loose, facenet-like)."""
    from skimage import data

    return data.astronaut()[30:190, 145:305].copy()


def _to_input(images: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 RGB images -> (B, 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@pytest.fixture(scope="session")
def to_input() -> Callable[[list[np.ndarray]], torch.Tensor]:
    return _to_input

"""Synthetic occlusion augmentation: p, area cap, locality of the change, determinism."""
from __future__ import annotations

import pytest
import torch

from faceswap.data.occlusion import paste_occluders


def _images(b: int = 12, size: int = 64) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_p0_is_the_identity() -> None:
    x = _images()
    out, mask = paste_occluders(x, torch.Generator().manual_seed(1), p=0.0)
    assert torch.equal(out, x) and mask.shape == (12, 1, 64, 64) and (mask == 0).all()


@pytest.mark.parametrize("max_area", [0.25, 0.05])
def test_p1_changes_only_the_mask(max_area: float) -> None:
    x = _images()
    out, mask = paste_occluders(x, torch.Generator().manual_seed(2), p=1.0, max_area=max_area)
    assert out.shape == x.shape and out.dtype == x.dtype and mask.dtype == x.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    area = mask.mean(dim=(1, 2, 3))
    assert (area > 0).all() and (area <= max_area).all(), area
    outside = (mask == 0).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    changed = (out != x).any(dim=1, keepdim=True)
    assert (changed <= (mask == 1)).all()
    assert changed.flatten(1).any(dim=1).all()  # every image really got an occluder
    assert out.min() >= -1 and out.max() <= 1


def test_partial_p_and_tiny_area_cap() -> None:
    x = _images(b=64, size=16)
    _, mask = paste_occluders(x, torch.Generator().manual_seed(3), p=0.5)
    hit = mask.flatten(1).any(dim=1).float().mean().item()
    assert 0.25 < hit < 0.75
    _, mask = paste_occluders(x, torch.Generator().manual_seed(3), p=1.0, max_area=2 / 256)
    assert (mask.sum(dim=(1, 2, 3)) <= 2).all() and (mask.sum(dim=(1, 2, 3)) >= 1).all()


def test_same_seed_same_output() -> None:
    x = _images()
    a = paste_occluders(x, torch.Generator().manual_seed(7), p=0.7)
    b = paste_occluders(x, torch.Generator().manual_seed(7), p=0.7)
    c = paste_occluders(x, torch.Generator().manual_seed(8), p=0.7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    g = torch.Generator().manual_seed(7)  # the generator advances: a second call differs
    first, second = paste_occluders(x, g, p=1.0), paste_occluders(x, g, p=1.0)
    assert not torch.equal(first[1], second[1])


def test_bad_arguments() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError):
        paste_occluders(torch.zeros(2, 1, 8, 8), g)
    with pytest.raises(ValueError):
        paste_occluders(torch.zeros(2, 3, 8, 8), g, p=1.5)
    with pytest.raises(ValueError):
        paste_occluders(torch.zeros(2, 3, 8, 8), g, max_area=0.0)

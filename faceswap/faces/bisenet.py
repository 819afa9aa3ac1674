"""BiSeNet face parsing backend (architecture of face-parsing.PyTorch, 19 CelebAMask-HQ classes).

The module tree reproduces the state_dict layout of that project's public checkpoint
(``79999_iter.pth``): ``cp.resnet.*`` (ResNet18 trunk without ``fc``), ``cp.arm16``/``cp.arm32``
(attention refinement), ``cp.conv_head16``/``cp.conv_head32``/``cp.conv_avg``, ``ffm.*``
(feature fusion) and the heads ``conv_out``/``conv_out16``/``conv_out32`` (each
``conv.conv``/``conv.bn``/``conv_out``). As in that project, the separate spatial path is
replaced by the ResNet 1/8 feature (``feat_res8``), so there are no ``sp.*`` keys.

Weights always come from a local file (see :mod:`faceswap.core.weights`); nothing is
downloaded. :class:`BiSeNetParser` maps the 19 classes to the pipeline's 7 :data:`LABELS`.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap.core.weights import load_into

from .labels import CELEBAMASK19, CELEBAMASK19_TO_LABELS, LABELS

__all__ = ["LABELS", "CELEBAMASK19", "CELEBAMASK19_TO_LABELS", "BiSeNet", "BiSeNetParser"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 512  # the checkpoint was trained on 512x512 crops


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BN -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block with the torchvision key names (conv1/bn1/conv2/bn2/downsample.0/1)."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample: nn.Module | None = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, 1, stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_chan: int, out_chan: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), BasicBlock(out_chan, out_chan, 1))


class Resnet18(nn.Module):
    """ResNet18 trunk (no avgpool/fc) returning the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B,64,H/4,W/4)
        feat8 = self.layer2(self.layer1(x))  # (B,128,H/8,W/8)
        feat16 = self.layer3(feat8)  # (B,256,H/16,W/16)
        feat32 = self.layer4(feat16)  # (B,512,H/32,W/32)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """ConvBNReLU, then channel attention from the global average (1x1 conv + BN + sigmoid)."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan, 3, 1, 1)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet18 + ARMs + global context; returns (feat_res8, feat_cp8, feat_cp16)."""

    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # (B,128,1,1)
        feat32_sum = self.arm32(feat32) + avg  # broadcast == nearest upsampling of a 1x1 map
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # (B,128,H/8), (B,128,H/8), (B,128,H/16)


class FeatureFusionModule(nn.Module):
    """Concatenate spatial + context features, 1x1 ConvBNReLU, squeeze-excite style reweighting."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, 1, 1, 0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """Head: ConvBNReLU then a 1x1 classifier; keys ``conv.conv``, ``conv.bn``, ``conv_out``."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch BiSeNet. ``forward`` returns full-resolution logits (B,n_classes,H,W).

    The auxiliary heads ``conv_out16``/``conv_out32`` exist so the checkpoint loads strictly; they
    are only evaluated by :meth:`forward_all` (training-time deep supervision).
    """

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B,3,H,W) ImageNet-normalised RGB, H and W multiples of 32 -> (B,n_classes,H,W)."""
        feat_res8, feat_cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat_res8, feat_cp8))  # (B,n,H/8,W/8)
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Main and both auxiliary logits, each upsampled to (B,n_classes,H,W)."""
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        outs = (self.conv_out(self.ffm(feat_res8, feat_cp8)),
                self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return tuple(F.interpolate(o, x.shape[2:], mode="bilinear", align_corners=True) for o in outs)


class BiSeNetParser:
    """Face parsing with a 19-class BiSeNet checkpoint, output in the pipeline's 7 :data:`LABELS`.

    Args:
        weights_path: local ``.pth``/``.safetensors`` state dict of :class:`BiSeNet` (n_classes=19),
            e.g. face-parsing.PyTorch's ``79999_iter.pth``.
        device: torch device to run on.
        batch_size: crops per forward pass (bounds memory at 512x512).

    Raises:
        WeightsError: the file is missing/unreadable/unsafe or does not fit the architecture.
    """

    def __init__(self, weights_path: str | os.PathLike, device: str | torch.device = "cpu",
                 batch_size: int = 8):
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.net = load_into(BiSeNet(n_classes=len(CELEBAMASK19)), weights_path).eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._lut = torch.from_numpy(CELEBAMASK19_TO_LABELS).to(self.device)

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """crops: (B,S,S,3) uint8 RGB -> (B,S,S) uint8 labels in 0..len(LABELS)-1."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"expected (B,S,S,3) uint8 RGB crops, got {crops.shape} {crops.dtype}")
        b, h, w, _ = crops.shape
        out = np.empty((b, h, w), dtype=np.uint8)
        for start in range(0, b, self.batch_size):
            chunk = crops[start:start + self.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (b,3,S,S) in [0,1]
            if (h, w) != (INPUT_SIZE, INPUT_SIZE):
                x = F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                                  antialias=h > INPUT_SIZE or w > INPUT_SIZE)
            x = (x - self._mean) / self._std
            cls19 = self.net(x).argmax(1)  # (b,512,512) int64 in 0..18
            labels = self._lut[cls19].cpu().numpy()  # (b,512,512) uint8 in 0..6
            for i, lab in enumerate(labels):
                if lab.shape != (h, w):
                    lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
                out[start + i] = lab
        return out

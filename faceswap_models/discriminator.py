"""Discriminators: `PatchDiscriminator` (Dswa, for Fswa) and `Dres` (realism critic of Dshape).

Architecture: StarGAN-v2-style (Choi et al. 2020) — a 3x3 stem, `num_down` pre-activation
residual blocks (LeakyReLU 0.2, no normalisation, average-pool downsampling, learned 1x1
shortcut, output / sqrt(2)), then LeakyReLU + 1x1 conv to one logit per patch. Unlike StarGAN-v2
the head stops before the global 4x4 conv, so the output is a patch-logit map
(B, 1, H / 2**num_down, W / 2**num_down) for the hinge loss (mean over patches).
Single-scale, not multi-scale.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import DiscriminatorConfig


class DownResBlock(nn.Module):
    """StarGAN-v2 discriminator ResBlk with 2x average-pool downsampling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        s = F.avg_pool2d(self.skip(x), 2)  # (B, c_out, H/2, W/2)
        r = self.conv1(F.leaky_relu(x, 0.2))
        r = self.conv2(F.leaky_relu(F.avg_pool2d(r, 2), 0.2))  # (B, c_out, H/2, W/2)
        return (s + r) / math.sqrt(2)


class PatchDiscriminator(nn.Module):
    """Image (B, C, H, W) in [-1, 1] -> patch logits (B, 1, H/2^n, W/2^n). Used as Dswa."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(cfg.num_down + 1)]
        self.stem = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.blocks = nn.Sequential(*(DownResBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(chans[-1], chans[-1], 3, padding=1),
                                  nn.LeakyReLU(0.2), nn.Conv2d(chans[-1], 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        assert C == self.cfg.in_channels and H == W == self.cfg.img_size, \
            f"expected (B, {self.cfg.in_channels}, {self.cfg.img_size}, {self.cfg.img_size}), got {tuple(x.shape)}"
        return self.head(self.blocks(self.stem(x)))  # (B, 1, H/2^n, W/2^n)


class Dres(PatchDiscriminator):
    """Dshape's realism discriminator on warped faces I2_res (training of Dshape only).

    The paper's final variant takes the image alone (adding S2 / S2_res brought no gain, Table III),
    so it is the same architecture as Dswa, trained separately.
    """

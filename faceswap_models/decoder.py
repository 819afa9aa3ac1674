"""Convolutional decoder Df (paper III-A2): fused patch embeddings -> swapped image.

The paper finds a conv decoder more realistic than a ViT decoder (Table IV). Sizes are not given;
here: tokens -> (B, D, g, g) grid -> 1x1 projection -> residual block, then one
(nearest x2 upsample + residual block) stage per further channel entry -> 3x3 conv -> tanh.
With cfg.skip (not in the paper) images enter at every resolution through `SkipBranch`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import DecoderConfig
from faceswap_models.layers import ConvResBlock, num_groups


class SkipBranch(nn.Module):
    """(B, k, H, W) images -> (B, c, h, w) features added to the decoder's: area-downsampled to h x w,
    conv3x3 -> LeakyReLU -> conv3x3, the last conv zero at init (the decoder starts as without it)."""

    def __init__(self, k: int, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(k, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        return self.body(F.adaptive_avg_pool2d(images, size))  # (B, c, h, w)


class ConvDecoder(nn.Module):
    """(B, N, D) tokens on a g x g grid (+ (B, 3 * len(cfg.skip), H, W) skip images) -> (B,
    out_channels, g*2^S, g*2^S) image in [-1, 1]. With cfg.skip set, skip=None closes the skip
    branches (they add nothing and get no gradient): the decoder is then the one without them."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.proj = nn.Conv2d(cfg.in_dim, c[0], 1)
        self.stem = ConvResBlock(c[0], c[0])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), ConvResBlock(c_in, c_out))
            for c_in, c_out in zip(c[:-1], c[1:]))
        self.head = nn.Sequential(nn.GroupNorm(num_groups(c[-1]), c[-1]), nn.LeakyReLU(0.2),
                                  nn.Conv2d(c[-1], cfg.out_channels, 3, padding=1), nn.Tanh())
        k = 3 * len(cfg.skip)
        self.skips = nn.ModuleList(SkipBranch(k, ci) for ci in c) if k else None

    def forward(self, tokens: Tensor, skip: Tensor | None = None) -> Tensor:
        B, N, D = tokens.shape
        g = self.cfg.grid_size
        assert N == g * g and D == self.cfg.in_dim, f"tokens {tuple(tokens.shape)}, expected (B, {g * g}, {self.cfg.in_dim})"
        assert skip is None or self.skips is not None, "skip images given but cfg.skip is not set"
        x = tokens.transpose(1, 2).reshape(B, D, g, g)  # (B, D, g, g), row-major patch order
        x = self.stem(self.proj(x))  # (B, c0, g, g)
        for i in range(len(self.ups) + 1):
            if i:
                x = self.ups[i - 1](x)  # (B, c_i, 2h, 2w)
            if skip is not None:
                x = x + self.skips[i](skip, x.shape[-2:])
        return self.head(x)  # (B, 3, H, W)

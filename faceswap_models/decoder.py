"""Convolutional decoder Df (paper III-A2): fused patch embeddings -> swapped image.

The paper finds a conv decoder more realistic than a ViT decoder (Table IV). Sizes are not given;
here: tokens -> (B, D, g, g) grid -> 1x1 projection -> residual block, then one
(nearest x2 upsample + residual block) stage per further channel entry -> 3x3 conv -> tanh.
"""
from __future__ import annotations

from torch import Tensor, nn

from faceswap_models.config import DecoderConfig
from faceswap_models.layers import ConvResBlock, num_groups


class ConvDecoder(nn.Module):
    """(B, N, D) tokens on a g x g grid -> (B, out_channels, g*2^S, g*2^S) image in [-1, 1]."""

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

    def forward(self, tokens: Tensor) -> Tensor:
        B, N, D = tokens.shape
        g = self.cfg.grid_size
        assert N == g * g and D == self.cfg.in_dim, f"tokens {tuple(tokens.shape)}, expected (B, {g * g}, {self.cfg.in_dim})"
        x = tokens.transpose(1, 2).reshape(B, D, g, g)  # (B, D, g, g), row-major patch order
        x = self.stem(self.proj(x))  # (B, c0, g, g)
        for up in self.ups:
            x = up(x)  # (B, c_i, 2h, 2w)
        return self.head(x)  # (B, 3, H, W)

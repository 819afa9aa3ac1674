"""Shared building blocks: ViT pieces (patch embedding, attention, MLP, block), conv blocks and StarGAN-v2's
AdaIN / encoder ResBlks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2D sin-cos position embedding as in MAE. Returns (grid*grid, dim), row-major patches."""
    assert dim % 4 == 0, f"dim {dim} must be divisible by 4 for 2D sin-cos embedding"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # (D/4,)
    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # (g, g) each

    def enc(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]  # (N, D/4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (N, D/2)

    # MAE convention: first half encodes w (x), second half h (y)
    return torch.cat([enc(gx), enc(gy)], dim=1).float()  # (N, D)


def patchify(imgs: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)*(W/p), MAE ordering (p, p, C)."""
    B, C, H, W = imgs.shape
    assert H % p == 0 and W % p == 0, f"image {H}x{W} not divisible by patch {p}"
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: Tensor, p: int, channels: int = 3) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); inverse of `patchify` for square grids."""
    B, N, _ = x.shape
    h = w = int(math.isqrt(N))
    assert h * w == N, f"{N} patches do not form a square grid"
    x = x.reshape(B, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, channels, h * p, w * p)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-dim tokens via a strided conv."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        assert H == W == self.img_size, f"expected {self.img_size}x{self.img_size} input, got {H}x{W}"
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class MLP(nn.Module):
    """Transformer feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, hd) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear/patch conv, zero bias, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest GroupNorm group count <= max_groups that divides `channels`."""
    return math.gcd(channels, max_groups)


class ConvResBlock(nn.Module):
    """Pre-activation residual block: [GN -> LeakyReLU -> conv3x3] x 2 + (1x1) shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(num_groups(c_in), c_in), nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(num_groups(c_out), c_out), nn.LeakyReLU(0.2), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)  # (B, c_out, H, W)


# --------------------------------------------------------------------------- StarGAN-v2 blocks (FaceDancer, HifiFace)
class AdaIN(nn.Module):
    """Adaptive instance norm: (1 + gamma(w)) * IN(x) + beta(w), gamma / beta per channel from the style w."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.fc = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x (B, C, H, W), w (B, style_dim) -> (B, C, H, W)."""
        gamma, beta = self.fc(w)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return (1 + gamma) * self.norm(x) + beta


class AdaINResBlock(nn.Module):
    """StarGAN-v2's AdaIN ResBlk: AdaIN -> LeakyReLU(0.2) -> [x2 nearest up] -> 3x3 conv, twice; the
    shortcut is [x2 up ->] 1x1 conv when the widths differ; output (residual + shortcut) / sqrt(2)."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(c_in, style_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = AdaIN(c_out, style_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x (B, c_in, S, S), w (B, style_dim) -> (B, c_out, S', S'), S' = 2S when upsampling."""
        r = self.conv1(self._up(F.leaky_relu(self.norm1(x, w), 0.2)))
        r = self.conv2(F.leaky_relu(self.norm2(r, w), 0.2))
        return (r + self.skip(self._up(x))) / math.sqrt(2)


class EncoderResBlock(nn.Module):
    """StarGAN-v2's encoder ResBlk with instance norm and x2 average-pool down-sampling:
    (B, c_in, S, S) -> (B, c_out, S/2, S/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(c_in, affine=True)
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(c_in, affine=True)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        r = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        r = self.conv2(F.leaky_relu(self.norm2(F.avg_pool2d(r, 2)), 0.2))
        return (r + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)

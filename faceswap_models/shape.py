"""Facial shape discriminator Dshape (paper III-B, Figure 3).

Gres(P12, P2, S2) -> dense semantic flow Vt (B, 2, H, W); a warping module F(Vt, I2) -> I2_res
used (with Dres) only while Dshape itself is trained. When supervising Fswa, Dshape is frozen
and only `ShapeDiscriminator.flow(...)` is used: L_flow = mean ||V_so||_2.

Conventions (everything in the aligned img_size x img_size crop, 256 in the paper):
  * Landmarks: (B, K, 2) float pixel coordinates (x, y); pixel (row i, col j) has its centre at
    (x=j, y=i), i.e. the OpenCV / dlib convention. K = cfg.num_landmarks contour points (17 jaw
    points of the 68-point iBUG layout by default).
  * Flow: (B, 2, H, W) in pixels, channel 0 = dx, channel 1 = dy, *backward* warping:
    out[y, x] = img[y + dy, x + dx] (bilinear). Warping I2 with Vt moves its contour P2 onto P12.
  * Parsing S2: one-hot / soft (B, C, H, W) float or integer labels (B, H, W), C = cfg.num_classes
    (0 background, 1 skin, 2 brows, 3 eyes, 4 nose, 5 mouth, 6 hair by default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import ShapeConfig
from faceswap_models.layers import ConvResBlock, num_groups


def rasterise_landmarks(points: Tensor, size: int | tuple[int, int], sigma: float) -> Tensor:
    """Differentiable Gaussian heatmaps, one channel per landmark.

    Args:
        points: (B, K, 2) pixel coordinates (x, y), pixel centres at integers.
        size: output H (= W) or (H, W).
        sigma: Gaussian standard deviation in pixels.
    Returns:
        (B, K, H, W) heatmaps exp(-((X - x)^2 + (Y - y)^2) / (2 sigma^2)), peak 1 at the point.
    """
    assert points.dim() == 3 and points.shape[-1] == 2, f"points must be (B, K, 2), got {tuple(points.shape)}"
    H, W = (size, size) if isinstance(size, int) else size
    ys = torch.arange(H, device=points.device, dtype=points.dtype).view(1, 1, H, 1)
    xs = torch.arange(W, device=points.device, dtype=points.dtype).view(1, 1, 1, W)
    px = points[..., 0, None, None]  # (B, K, 1, 1)
    py = points[..., 1, None, None]
    d2 = (xs - px) ** 2 + (ys - py) ** 2  # (B, K, H, W)
    return torch.exp(-d2 / (2.0 * sigma**2))


def parsing_to_onehot(s: Tensor, num_classes: int) -> Tensor:
    """Integer labels (B, H, W) -> one-hot float (B, C, H, W); float (B, C, H, W) passes through."""
    if s.dim() == 3:
        assert not s.is_floating_point(), "label maps (B, H, W) must be integer"
        return F.one_hot(s.long(), num_classes).permute(0, 3, 1, 2).float()
    assert s.dim() == 4 and s.shape[1] == num_classes, f"parsing must be (B, {num_classes}, H, W), got {tuple(s.shape)}"
    return s


def base_grid(H: int, W: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel-centre coordinates (1, 2, H, W): channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                            torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0)


class FlowWarp(nn.Module):
    """Backward warping by a dense pixel flow: out[y, x] = img[y + dy, x + dx] (bilinear).

    grid_sample with align_corners=True, so normalised -1 / +1 are the centres of the first / last
    pixels — the same integer-pixel-centre convention as the landmarks; a zero flow is then the
    exact identity and an integer flow an exact translation. padding_mode='border' repeats edge
    pixels for samples that fall outside the image (no black borders entering the face crop).
    No parameters.
    """

    def forward(self, img: Tensor, flow: Tensor) -> Tensor:
        B, C, H, W = img.shape
        assert flow.shape == (B, 2, H, W), f"flow {tuple(flow.shape)} vs image {tuple(img.shape)}"
        pos = base_grid(H, W, img.device, flow.dtype) + flow  # (B, 2, H, W) sample positions in pixels
        gx = 2.0 * pos[:, 0] / max(W - 1, 1) - 1.0  # (B, H, W)
        gy = 2.0 * pos[:, 1] / max(H - 1, 1) - 1.0
        grid = torch.stack([gx, gy], dim=-1)  # (B, H, W, 2)
        return F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=True)


class SemanticFlowGenerator(nn.Module):
    """Gres: U-Net over [heatmaps(P12) | heatmaps(P2) | S2] -> flow Vt (B, 2, H, W) in pixels.

    Encoder: 3x3 stem, then `num_down` (avg-pool 2x + ConvResBlock) levels with channels
    min(base * 2^i, max); bottleneck ConvResBlock; decoder mirrors with nearest upsampling and
    skip concatenation; GN + LeakyReLU + 3x3 conv head to 2 channels, initialised small so that a
    fresh Gres starts near the identity warp.
    """

    def __init__(self, cfg: ShapeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(cfg.num_down + 1)]
        self.stem = nn.Conv2d(cfg.in_channels, c[0], 3, padding=1)
        self.downs = nn.ModuleList(ConvResBlock(c[i], c[i + 1]) for i in range(cfg.num_down))
        self.mid = ConvResBlock(c[-1], c[-1])
        self.ups = nn.ModuleList(ConvResBlock(c[i + 1] + c[i], c[i]) for i in range(cfg.num_down))
        self.head = nn.Sequential(nn.GroupNorm(num_groups(c[0]), c[0]), nn.LeakyReLU(0.2),
                                  nn.Conv2d(c[0], 2, 3, padding=1))
        out = self.head[-1]
        assert isinstance(out, nn.Conv2d)
        with torch.no_grad():
            out.weight.mul_(0.01)
            out.bias.zero_()

    def encode_inputs(self, p12: Tensor, p2: Tensor, s2: Tensor) -> Tensor:
        """Rasterise landmarks and stack with the parsing map -> (B, 2K + C, H, W)."""
        cfg = self.cfg
        B, K, _ = p12.shape
        assert p2.shape == p12.shape and K == cfg.num_landmarks, \
            f"p12 {tuple(p12.shape)}, p2 {tuple(p2.shape)}, expected (B, {cfg.num_landmarks}, 2)"
        s = parsing_to_onehot(s2, cfg.num_classes).to(p12.dtype)  # (B, C, H, W)
        assert s.shape == (B, cfg.num_classes, cfg.img_size, cfg.img_size), f"s2 {tuple(s.shape)}"
        h12 = rasterise_landmarks(p12, cfg.img_size, cfg.heatmap_sigma)  # (B, K, H, W)
        h2 = rasterise_landmarks(p2, cfg.img_size, cfg.heatmap_sigma)  # (B, K, H, W)
        return torch.cat([h12, h2, s], dim=1)  # (B, 2K + C, H, W)

    def forward(self, p12: Tensor, p2: Tensor, s2: Tensor) -> Tensor:
        """Vt = Gres(P12, P2, S2), paper eq. (17). Returns (B, 2, H, W) flow in pixels."""
        x = self.stem(self.encode_inputs(p12, p2, s2))  # (B, c0, H, W)
        skips = [x]
        for down in self.downs:
            x = down(F.avg_pool2d(x, 2))  # (B, c_{i+1}, H/2^{i+1}, W/2^{i+1})
            skips.append(x)
        x = self.mid(skips.pop())  # (B, c_n, H/2^n, W/2^n)
        for up in reversed(self.ups):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = up(torch.cat([x, skip], dim=1))  # (B, c_i, ...)
        return self.head(x)  # (B, 2, H, W)


class ShapeDiscriminator(nn.Module):
    """Dshape = Gres + warping module.

    Training Dshape (stage train_shape): `i2_res, v = dshape(i2, p12, p2, s2)`, then
    rec(i2_res, i2) + ldmk(landmarks(i2_res), p12) + adv(Dres(i2_res)).
    Supervising Fswa (frozen): with I1 = I_o (swap output) and I2 = I_s (source), P2 / S2 are the
    source's contour landmarks / parsing and P12 the contour of I_o's 3DMM shape posed with the
    source's pose, expression and camera (eq. 16; computed on the fly by the regressor in
    faceswap_models.auxiliary, differentiable w.r.t. I_o); `v_so = dshape.flow(p12, p2, s2)`.
    """

    def __init__(self, cfg: ShapeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator = SemanticFlowGenerator(cfg)
        self.warp = FlowWarp()

    def flow(self, p12: Tensor, p2: Tensor, s2: Tensor) -> Tensor:
        """Semantic flow V (B, 2, H, W), pixels. p12, p2: (B, K, 2) pixel coords; s2: parsing."""
        return self.generator(p12, p2, s2)

    def forward(self, i2: Tensor, p12: Tensor, p2: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Warp I2 towards the shape P12. Returns (I2_res (B, 3, H, W), Vt (B, 2, H, W))."""
        v = self.flow(p12, p2, s2)
        return self.warp(i2, v), v

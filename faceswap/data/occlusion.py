"""Synthetic occlusion augmentation (FaceShifter, Li et al. 2019, Fig. 13).

The paper pastes real hands and objects onto training faces so that occlusions are frequent enough to
learn from. No such image collection is available offline, so `paste_occluders` pastes synthetic
occluders instead: one random ellipse, rectangle or star-shaped polygon per chosen image, filled with a
random two-colour texture (stripes, smooth noise blobs or a shading ramp), centred in the face region of
an aligned crop. Pure torch; every random number comes from the caller's `torch.Generator`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_occluders"]

_POLY_VERTICES = 7
_NOISE_GRID = 8  # smooth-noise texture: bilinear upsampling of an 8 x 8 random grid


def paste_occluders(images: Tensor, generator: torch.Generator, p: float = 0.5,
                    max_area: float = 0.25) -> tuple[Tensor, Tensor]:
    """Paste one synthetic occluder on each image with probability p.

    Args:
        images: (B, 3, H, W) in [-1, 1] (aligned face crops; the occluder centre is drawn in
            y in [0.3, 0.8] H, x in [0.25, 0.75] W).
        generator: the only source of randomness; the same generator state gives the same output.
            A fixed number of values is drawn per call, whatever p, so later draws do not depend on p.
        p: probability that an image gets an occluder.
        max_area: the occluder covers at most this fraction of the image (its target area is drawn in
            [0.3, 1] max_area; clipped by the borders and capped to floor(max_area H W) pixels; at least one
            pixel when max_area H W >= 1).
    Returns:
        (occluded images (B, 3, H, W) in [-1, 1], equal to `images` wherever the mask is 0,
         mask (B, 1, H, W) with values in {0, 1}, 1 on the occluder), both in images' dtype and device.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not 0.0 < max_area <= 1.0:
        raise ValueError(f"max_area must be in (0, 1], got {max_area}")
    B, _, H, W = images.shape
    dev = images.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=generator.device).to(dev, torch.float32)

    apply = rand(B) < p
    kind = (rand(B) * 3).long().clamp(max=2)  # 0 ellipse, 1 rectangle, 2 polygon
    area = max_area * H * W * (0.3 + 0.7 * rand(B))  # target area in pixels
    aspect = torch.exp((2 * rand(B) - 1) * math.log(2.0))  # width / height in [1/2, 2]
    theta = math.pi * rand(B)
    cy, cx = (0.3 + 0.5 * rand(B)) * H, (0.25 + 0.5 * rand(B)) * W
    radii = 0.55 + 0.45 * rand(B, _POLY_VERTICES)
    jitter = 0.8 * (rand(B, _POLY_VERTICES) - 0.5)  # vertex angle offsets, in angular steps
    colours = 2 * rand(B, 2, 3) - 1
    texture = (rand(B) * 3).long().clamp(max=2)  # 0 stripes, 1 noise blobs, 2 shading ramp
    cycles = 1.5 + 2.5 * rand(B)  # stripes per occluder side
    phase = 2 * math.pi * rand(B)
    alpha = 2 * math.pi * rand(B)  # stripe / ramp direction
    noise = rand(B, 1, _NOISE_GRID, _NOISE_GRID)

    ys = torch.arange(H, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(W, device=dev, dtype=torch.float32) + 0.5
    dy = ys[None, :, None] - cy[:, None, None]  # (B, H, 1)
    dx = xs[None, None, :] - cx[:, None, None]  # (B, 1, W)
    dy, dx = torch.broadcast_tensors(dy, dx)  # (B, H, W)

    def bc(v: Tensor) -> Tensor:  # (B,) -> (B, 1, 1)
        return v[:, None, None]

    # shape functions f: f <= 1 inside the occluder
    u = dx * bc(theta.cos()) + dy * bc(theta.sin())
    v = -dx * bc(theta.sin()) + dy * bc(theta.cos())
    rx, ry = torch.sqrt(area * aspect / math.pi), torch.sqrt(area / (aspect * math.pi))  # pi rx ry = area
    f_ellipse = torch.sqrt((u / bc(rx)) ** 2 + (v / bc(ry)) ** 2)
    hx, hy = torch.sqrt(area * aspect) / 2, torch.sqrt(area / aspect) / 2  # 4 hx hy = area
    f_rect = torch.maximum(u.abs() / bc(hx), v.abs() / bc(hy))
    f_poly = _star_polygon(dy, dx, theta, radii, jitter, area)
    f = torch.where(bc(kind) == 0, f_ellipse, torch.where(bc(kind) == 1, f_rect, f_poly))

    # cap the area: keep the max_px pixels of smallest f inside the shape (and always the innermost one)
    max_px = int(math.floor(max_area * H * W))
    flat = f.flatten(1)  # (B, H W)
    order = flat.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W, device=dev).expand(B, -1))
    keep = ((flat <= 1) | (rank == 0)) & (rank < max_px) & apply[:, None]
    mask = keep.view(B, 1, H, W)

    # texture s in [0, 1] mixing the two colours
    side = bc(area.sqrt())
    along = (dx * bc(alpha.cos()) + dy * bc(alpha.sin())) / side  # occluder sides along the direction
    s_stripes = (torch.sin(2 * math.pi * bc(cycles) * along + bc(phase)) > 0).float()
    s_noise = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    s_ramp = (0.5 + along).clamp(0, 1)
    s = torch.where(bc(texture) == 0, s_stripes, torch.where(bc(texture) == 1, s_noise, s_ramp))[:, None]
    c1, c2 = colours[:, 0, :, None, None], colours[:, 1, :, None, None]  # (B, 3, 1, 1)
    fill = (c1 + (c2 - c1) * s).clamp(-1, 1)  # (B, 3, H, W)

    out = torch.where(mask, fill.to(images.dtype), images)
    return out, mask.to(images.dtype)


def _star_polygon(dy: Tensor, dx: Tensor, theta: Tensor, radii: Tensor, jitter: Tensor, area: Tensor) -> Tensor:
    """f = distance / boundary distance along the ray from the centre for a star-shaped polygon.

    K vertices at angles theta + 2 pi (i + jitter_i) / K (|jitter| < 0.5 keeps them ordered, every angular
    gap below pi) and radii R radii_i, R scaling the polygon to `area` pixels. dy, dx (B, H, W); others (B,)
    or (B, K). Along a ray at angle t between vertices i and i + 1 the boundary is at
    r_i r_(i+1) sin(t_(i+1) - t_i) / (r_i sin(t - t_i) + r_(i+1) sin(t_(i+1) - t)).
    """
    B, K = radii.shape
    step = 2 * math.pi / K
    psi = step * (torch.arange(K, device=dy.device, dtype=torch.float32)[None] + jitter)  # (B, K), from vertex 0
    psi = psi - psi[:, :1]  # vertex 0 at relative angle 0
    psi_ext = torch.cat([psi, torch.full_like(psi[:, :1], 2 * math.pi)], dim=1)  # (B, K + 1)
    r_ext = torch.cat([radii, radii[:, :1]], dim=1)
    gaps = psi_ext[:, 1:] - psi_ext[:, :-1]
    unit_area = 0.5 * (r_ext[:, :-1] * r_ext[:, 1:] * gaps.sin()).sum(dim=1)  # polygon area for R = 1
    scale = torch.sqrt(area / unit_area)  # (B,)

    start = theta + step * jitter[:, 0]  # absolute angle of vertex 0
    t = torch.remainder(torch.atan2(dy, dx) - start[:, None, None], 2 * math.pi).flatten(1)  # (B, H W)
    seg = (torch.searchsorted(psi_ext.contiguous(), t.contiguous(), right=True) - 1).clamp(0, K - 1)
    t0, t1 = psi_ext.gather(1, seg), psi_ext.gather(1, seg + 1)
    r0, r1 = r_ext.gather(1, seg), r_ext.gather(1, seg + 1)
    boundary = r0 * r1 * (t1 - t0).sin() / (r0 * (t - t0).sin() + r1 * (t1 - t).sin())  # (B, H W), R = 1
    dist = torch.sqrt(dy * dy + dx * dx).flatten(1)
    return (dist / (boundary * scale[:, None])).view_as(dy)

"""Differentiable 3DMM contour projection in torch (the numpy original is faceswap.faces.threedmm).

Only the K contour vertices are kept, so projecting a batch costs a few small matmuls. Used for
Dshape's landmark loss (contour of the regressed coefficients of I2_res vs P12) and for Fswa's
flow loss (P12 = contour of I_o's regressed shape posed with the source's expression, pose and
camera, paper eq. 16), both differentiable w.r.t. the coefficients.
"""
from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from faceswap.faces.threedmm import LinearFaceModel


def rotation_from_pose(pose_deg: Tensor) -> Tensor:
    """(B, 3) yaw, pitch, roll degrees -> (B, 3, 3) R = Rz(roll) Ry(-yaw) Rx(-pitch) (as the numpy one)."""
    yaw, pitch, roll = (pose_deg * (math.pi / 180.0)).unbind(-1)  # (B,) each
    a, b, g = -pitch, -yaw, roll
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).view(-1, 3, 3)
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).view(-1, 3, 3)
    rz = torch.stack([cg, -sg, zero, sg, cg, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


class ContourProjector(nn.Module):
    """Contour landmarks (B, K, 2) from 3DMM coefficients; buffers only, no parameters. With
    `points="mesh"` it projects every model vertex instead (HifiFace's shape loss: the dense landmarks).

    Camera (s, tx, ty) is in the pixels of the image the coefficients refer to; `scale` multiplies
    the whole projection (e.g. S / 256 for coefficients fitted on 256 crops used at size S).
    """

    def __init__(self, model: LinearFaceModel, points: str = "contour") -> None:
        super().__init__()
        if points not in ("contour", "mesh"):
            raise ValueError(f"points: expected contour or mesh, got {points!r}")
        idx = torch.as_tensor(model.contour_idx if points == "contour" else range(model.n_vertices), dtype=torch.long)
        self.register_buffer("mean", torch.as_tensor(model.mean, dtype=torch.float32)[idx])  # (K, 3)
        self.register_buffer("id_basis", torch.as_tensor(model.id_basis, dtype=torch.float32)[:, idx])  # (S, K, 3)
        self.register_buffer("exp_basis", torch.as_tensor(model.exp_basis, dtype=torch.float32)[:, idx])  # (E, K, 3)

    @classmethod
    def load(cls, path: str | os.PathLike, points: str = "contour") -> ContourProjector:
        return cls(LinearFaceModel.load(path), points)

    @property
    def num_points(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, shape: Tensor, expression: Tensor, pose: Tensor, camera: Tensor,
                scale: float = 1.0) -> Tensor:
        """shape (B, n_shape), expression (B, n_exp), pose (B, 3) deg, camera (B, 3) -> (B, K, 2) px."""
        shape, expression, pose, camera = (t.float() for t in (shape, expression, pose, camera))
        x = (self.mean + torch.einsum("bs,skc->bkc", shape, self.id_basis)
             + torch.einsum("be,ekc->bkc", expression, self.exp_basis))  # (B, K, 3) canonical frame
        xr = x @ rotation_from_pose(pose).transpose(1, 2)  # (B, K, 3)
        p = camera[:, None, :1] * xr[..., :2] + camera[:, None, 1:]  # (B, K, 2)
        return p * scale


def projected_points(points: ContourProjector, pred: dict[str, Tensor], size: int, crop_size: int,
                     shape: Tensor | None = None) -> Tensor:
    """The 3DMM points (B, K, 2), in pixels of the (B, 3, size, size) images the regressor output `pred` was
    read from; `shape` replaces the regressed identity shape (HifiFace's c_fuse). The regressor's camera scale is in the
    units of the crops it was trained on (`crop_size`), hence the rescale."""
    cam = pred["camera"]
    cam = torch.cat([cam[:, :1] * (size / crop_size), cam[:, 1:]], dim=1)
    return points(pred["shape"] if shape is None else shape, pred["expression"], pred["pose"], cam)

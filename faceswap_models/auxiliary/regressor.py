"""Differentiable face-attribute regressor: 68 landmarks + 3DMM coefficients from an image.

The FlowFace++ swap losses need, for *generated* images and differentiably w.r.t. the pixels:
68 landmarks (landmark loss), 3DMM shape/expression/pose/camera (to build the P12 contour
landmarks of the facial-shape loss) and an expression embedding (expression loss). The data
stages precompute these targets per aligned crop (``aligned.parquet`` landmarks68,
``threedmm.parquet`` coefficients); this small ResNet-style CNN regresses them so they can be
computed on the fly (trained by faceswap/training/regressor.py). See docs/auxiliary.md ("Face-attribute regressor").
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap.core.weights import load_state_dict_file
from faceswap_models.config import RegressorConfig

__all__ = ["RegressorConfig", "FaceAttributeRegressor", "regressor_loss", "load_regressor", "POSE_SCALE_DEG"]

POSE_SCALE_DEG = 90.0  # unit pose scale of an untrained model / of regressor_loss without `std`
HEADS = ("landmarks", "shape", "expression", "pose", "camera")


class _Block(nn.Module):
    """Pre-activation-free basic residual block with GroupNorm (no batch statistics)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.GroupNorm(_groups(cout), cout)))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


def _groups(c: int) -> int:
    return math.gcd(c, 8)


def _head_dims(cfg: RegressorConfig) -> dict[str, tuple[int, ...]]:
    return {"landmarks": (cfg.n_landmarks, 2), "shape": (cfg.n_shape,), "expression": (cfg.n_exp,),
            "pose": (3,), "camera": (3,)}


class FaceAttributeRegressor(nn.Module):
    """ResNet-style regressor. Input: RGB in [-1, 1], (B, 3, H, W) with H == W (any size).

    ``forward`` returns a dict:
      landmarks (B, n_landmarks, 2) x, y in *input* pixel coordinates (iBUG 68 order),
      shape (B, n_shape), expression (B, n_exp), pose (B, 3) yaw/pitch/roll degrees,
      camera (B, 3) scale, tx, ty (tx, ty in input pixels, like threedmm.parquet's crop pixels;
      scale in the units of the crops it was trained on).

    Landmarks: soft-argmax of one heatmap per point at 1/4 of the working resolution (logits from
    stages 2-4 plus the log of a Gaussian prior around the point's mean, 1.0 x its std wide, so an
    untrained model predicts the mean shape and the image has to earn each deviation). 3DMM heads:
    linear on [pooled features, standardised landmarks]; each predicts a standardised z and returns
    ``mean + std * z``. The per-head train-set statistics are buffers
    (``<head>_mean`` / ``<head>_std``, saved with the weights; landmarks and tx, ty as fractions of
    the side), set by ``set_target_stats`` before training. GroupNorm: no batch statistics; the
    only train/eval difference is ``cfg.dropout``.
    """

    PRIOR_SCALE = 1.0  # landmark prior: Gaussian around the mean point, PRIOR_SCALE x its target std wide

    def __init__(self, cfg: RegressorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RegressorConfig()
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.GroupNorm(_groups(w), w),
                                  nn.ReLU(inplace=True))  # S/2
        chans, stages, cin = (w, 2 * w, 4 * w, 8 * w), [], w
        for i, c in enumerate(chans):  # S/2, S/4, S/8, S/16
            stages.append(nn.Sequential(_Block(cin, c, 1 if i == 0 else 2), _Block(c, c, 1)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.heat = nn.ModuleList(nn.Conv2d(c, cfg.n_landmarks, 1) for c in chans[1:])  # S/4, S/8, S/16 logits
        self.pool = nn.AdaptiveAvgPool2d(4)  # keep coarse layout for the 3DMM heads
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(cin * 16, cfg.hidden), nn.ReLU(inplace=True),
                                   nn.Dropout(cfg.dropout))
        n_in = cfg.hidden + 2 * cfg.n_landmarks
        self.head_shape = nn.Linear(n_in, cfg.n_shape)
        self.head_expression = nn.Linear(n_in, cfg.n_exp)
        self.head_pose = nn.Linear(n_in, 3)
        self.head_camera = nn.Linear(n_in, 3)
        for k in HEADS[1:]:  # start near the mean: small head weights, zero bias
            head = getattr(self, f"head_{k}")
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        # unit statistics of an untrained model (landmarks / translation around the centre)
        dims = _head_dims(cfg)
        unit = {"landmarks": (0.5, 0.25), "shape": (0.0, 1.0), "expression": (0.0, 1.0), "pose": (0.0, POSE_SCALE_DEG)}
        for k, (m, s) in unit.items():
            self.register_buffer(f"{k}_mean", torch.full(dims[k], m))
            self.register_buffer(f"{k}_std", torch.full(dims[k], s))
        self.register_buffer("camera_mean", torch.tensor([1.0, 0.5, 0.5]))
        self.register_buffer("camera_std", torch.tensor([1.0, 0.25, 0.25]))

    @torch.no_grad()
    def set_target_stats(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Per-head (mean, std) in normalised units (landmarks and camera tx, ty / side)."""
        for k, (m, s) in stats.items():
            getattr(self, f"{k}_mean").copy_(m)
            getattr(self, f"{k}_std").copy_(s)

    def target_std(self) -> dict[str, Tensor]:
        """Per-head standard deviations in normalised units (the scales `regressor_loss` divides by)."""
        return {k: getattr(self, f"{k}_std") for k in HEADS}

    def _landmarks(self, f2: Tensor, f3: Tensor, f4: Tensor) -> Tensor:
        """(B, n_landmarks, 2) soft-argmax positions, fractions of the side."""
        size = f2.shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        logits = self.heat[0](f2) + up(self.heat[1](f3)) + up(self.heat[2](f4))  # (B, L, h, w)
        h, w = size
        ys = (torch.arange(h, device=f2.device, dtype=f2.dtype) + 0.5) / h
        xs = (torch.arange(w, device=f2.device, dtype=f2.dtype) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], -1).view(1, 1, h * w, 2)  # cell centres
        sigma = (self.PRIOR_SCALE * self.landmarks_std[None, :, None]).clamp_min(0.1 / h)  # (1, L, 1, 2)
        prior = -(((grid - self.landmarks_mean[None, :, None]) / sigma) ** 2).sum(-1) / 2  # (1, L, h * w)
        prob = torch.softmax(logits.flatten(2) + prior, dim=-1)  # (B, L, h * w)
        return (prob[..., None] * grid).sum(2)

    def _run(self, x: Tensor, heads: tuple[str, ...]) -> dict[str, Tensor]:
        """Normalised outputs (landmarks, tx, ty as fractions of the side) of the requested heads."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB in [-1, 1], got {tuple(x.shape)}")
        s = self.cfg.image_size
        if x.shape[-2:] != (s, s):
            x = resize_input(x, s)
        y, feats = self.stem(x), []
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        lm = self._landmarks(*feats[1:])
        z_lm = ((lm - self.landmarks_mean) / self.landmarks_std).flatten(1)
        h = torch.cat([self.trunk(self.pool(feats[-1])), z_lm], 1)  # (B, hidden + 2 L)
        out = {"landmarks": lm}
        for k in heads:
            out[k] = getattr(self, f"{k}_mean") + getattr(self, f"{k}_std") * getattr(self, f"head_{k}")(h)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = float(x.shape[-1])  # landmarks / translation are returned in input pixels
        out = self._run(x, HEADS[1:])
        cam = out["camera"]
        return {**out, "landmarks": out["landmarks"] * size, "camera": torch.cat([cam[:, :1], cam[:, 1:] * size], 1)}

    def expression_embedding(self, x: Tensor) -> Tensor:
        """(B, n_exp) expression coefficients — the embedding for the FlowFace++ expression loss.

        It is the 3DMM expression head, so it is identity-agnostic by construction of the
        targets; compare generated vs target embeddings (e.g. L2). Skips the other 3DMM heads.
        """
        return self._run(x, ("expression",))["expression"]


def resize_input(x: Tensor, s: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) to (s, s), antialiased when shrinking (the model's own input path)."""
    return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=x.shape[-1] > s)


def normalised_targets(t: dict[str, Tensor], size: float) -> dict[str, Tensor]:
    """Landmarks and camera tx, ty divided by the image side."""
    out = dict(t)
    out["landmarks"] = t["landmarks"] / size
    out["camera"] = torch.cat([t["camera"][:, :1], t["camera"][:, 1:] / size], 1)
    return out


def regressor_loss(pred: dict[str, Tensor], target: dict[str, Tensor], *,
                   image_size: float = 256.0, std: dict[str, Tensor] | None = None,
                   weights: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Named loss terms + ``total``, each on errors divided by the head's standard deviation.

    ``std``: per-head std in normalised units (``model.target_std()``: landmarks and tx, ty as
    fractions of ``image_size``), so every head starts near 1 when predicting the mean and none
    dominates. landmarks: mean point distance of the standardised (x, y) error; other heads:
    mean squared standardised error. Without ``std``: unit scales (landmarks / side, pose / 90°).
    """
    wts = {k: 1.0 for k in HEADS} | (weights or {})
    p, t = normalised_targets(pred, image_size), normalised_targets(target, image_size)
    if std is None:
        std = {k: p[k].new_ones(()) for k in HEADS} | {"pose": p["pose"].new_tensor(POSE_SCALE_DEG)}
    d = {k: (p[k] - t[k]) / std[k] for k in HEADS}
    out: dict[str, Tensor] = {"landmarks": d["landmarks"].norm(dim=-1).mean()}
    for k in HEADS[1:]:
        out[k] = d[k].square().mean()
    out["total"] = sum(wts[k] * out[k] for k in HEADS)
    return out


def load_regressor(path: str | os.PathLike, cfg: RegressorConfig | None = None, *,
                   device: str | torch.device = "cpu") -> FaceAttributeRegressor:
    """Strictly load weights (and target statistics) into a frozen eval-mode regressor; raises
    WeightsError naming ``path``."""
    model = FaceAttributeRegressor(cfg or RegressorConfig())
    load_state_dict_file(model, path)
    model.eval().requires_grad_(False)
    return model.to(device)

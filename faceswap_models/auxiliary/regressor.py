"""Differentiable face-attribute regressor: 68 landmarks + 3DMM coefficients from an image.

The FlowFace++ swap losses need, for *generated* images and differentiably w.r.t. the pixels:
68 landmarks (landmark loss), 3DMM shape/expression/pose/camera (to build the P12 contour
landmarks of the facial-shape loss) and an expression embedding (expression loss). The data
stages precompute these targets per aligned crop (``aligned.parquet`` landmarks68,
``threedmm.parquet`` coefficients); this module trains a small ResNet-style CNN to regress
them so they can be computed on the fly. See docs/auxiliary.md ("Face-attribute regressor").
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_common.images import read_rgb
from faceswap_common.schemas import ALIGNED, THREEDMM, read_table

from .weights import load_state_dict_file, save_safetensors_atomic

__all__ = ["RegressorConfig", "FaceAttributeRegressor", "regressor_loss", "FaceTableDataset",
           "train_regressor", "evaluate_regressor", "r_squared", "load_regressor", "POSE_SCALE_DEG"]

POSE_SCALE_DEG = 90.0  # pose head predicts degrees / 90; the loss compares at that scale
HEADS = ("landmarks", "shape", "expression", "pose", "camera")


@dataclass(frozen=True)
class RegressorConfig:
    """Regressor size. ``n_shape``/``n_exp`` must match threedmm.parquet (pipeline default 20/10)."""

    image_size: int = 256  # internal working resolution (input is resized to this)
    width: int = 32  # channels of the first stage; stages use width * (1, 2, 4, 8)
    n_landmarks: int = 68
    n_shape: int = 20
    n_exp: int = 10
    hidden: int = 512  # shared FC trunk before the heads

    @classmethod
    def paper(cls) -> RegressorConfig:
        return cls()

    @classmethod
    def tiny(cls) -> RegressorConfig:
        return cls(image_size=32, width=8, hidden=64)


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


class FaceAttributeRegressor(nn.Module):
    """ResNet-style regressor. Input: RGB in [-1, 1], (B, 3, H, W) with H == W (any size).

    ``forward`` returns a dict:
      landmarks (B, n_landmarks, 2) x, y in *input* pixel coordinates (iBUG 68 order),
      shape (B, n_shape), expression (B, n_exp), pose (B, 3) yaw/pitch/roll degrees,
      camera (B, 3) scale, tx, ty (tx, ty in input pixels, like threedmm.parquet's crop pixels).
    The model has no batch statistics (GroupNorm), so train/eval outputs are identical.
    """

    def __init__(self, cfg: RegressorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RegressorConfig()
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.GroupNorm(_groups(w), w),
                                  nn.ReLU(inplace=True))  # S/2
        chans, layers, cin = (w, 2 * w, 4 * w, 8 * w), [], w
        for i, c in enumerate(chans):  # S/2, S/4, S/8, S/16
            layers += [_Block(cin, c, 1 if i == 0 else 2), _Block(c, c, 1)]
            cin = c
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)  # keep coarse layout for landmark regression
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(cin * 16, cfg.hidden), nn.ReLU(inplace=True))
        self.head_landmarks = nn.Linear(cfg.hidden, cfg.n_landmarks * 2)
        self.head_shape = nn.Linear(cfg.hidden, cfg.n_shape)
        self.head_expression = nn.Linear(cfg.hidden, cfg.n_exp)
        self.head_pose = nn.Linear(cfg.hidden, 3)
        self.head_camera = nn.Linear(cfg.hidden, 3)

    def _features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB in [-1, 1], got {tuple(x.shape)}")
        s = self.cfg.image_size
        if x.shape[-2:] != (s, s):
            down = x.shape[-1] > s
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=down)
        return self.trunk(self.pool(self.stages(self.stem(x))))  # (B, hidden)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = float(x.shape[-1])  # landmarks / translation are returned in input pixels
        h = self._features(x)
        b = h.shape[0]
        lm = (0.5 + self.head_landmarks(h).view(b, self.cfg.n_landmarks, 2)) * size  # (B, 68, 2)
        cam = self.head_camera(h)  # (B, 3): raw scale, normalised translation
        camera = torch.cat([cam[:, :1], (0.5 + cam[:, 1:]) * size], 1)
        return {
            "landmarks": lm,
            "shape": self.head_shape(h),  # (B, n_shape)
            "expression": self.head_expression(h),  # (B, n_exp)
            "pose": self.head_pose(h) * POSE_SCALE_DEG,  # (B, 3) degrees
            "camera": camera,  # (B, 3)
        }

    def expression_embedding(self, x: Tensor) -> Tensor:
        """(B, n_exp) expression coefficients — the embedding for the FlowFace++ expression loss.

        It is the 3DMM expression head, so it is identity-agnostic by construction of the
        targets; compare generated vs target embeddings (e.g. L2). Skips the other heads.
        """
        return self.head_expression(self._features(x))


def regressor_loss(pred: dict[str, Tensor], target: dict[str, Tensor], *,
                   image_size: float = 256.0,
                   weights: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Named loss terms + ``total``.

    landmarks: mean Euclidean landmark error / ``image_size`` (the crop side in pixels);
    shape, expression: mean squared error of the coefficient vectors;
    pose: MSE of degrees / 90; camera: MSE of (scale, tx / size, ty / size).
    """
    wts = {k: 1.0 for k in HEADS} | (weights or {})
    out: dict[str, Tensor] = {}
    out["landmarks"] = (pred["landmarks"] - target["landmarks"]).norm(dim=-1).mean() / image_size
    out["shape"] = F.mse_loss(pred["shape"], target["shape"])
    out["expression"] = F.mse_loss(pred["expression"], target["expression"])
    out["pose"] = F.mse_loss(pred["pose"] / POSE_SCALE_DEG, target["pose"] / POSE_SCALE_DEG)
    norm = pred["camera"].new_tensor([1.0, image_size, image_size])
    out["camera"] = F.mse_loss(pred["camera"] / norm, target["camera"] / norm)
    out["total"] = sum(wts[k] * out[k] for k in HEADS)
    return out


class FaceTableDataset(torch.utils.data.Dataset):
    """aligned.parquet ⋈ threedmm.parquet on sha256 -> (image (3, S, S) in [-1, 1], targets).

    targets: landmarks (68, 2) crop pixels, shape (n_shape,), expression (n_exp,), pose (3,),
    camera (3,), all float32. Rows without a 3DMM fit are dropped.
    """

    def __init__(self, aligned_parquet: str | os.PathLike, aligned_dir: str | os.PathLike,
                 threedmm_parquet: str | os.PathLike) -> None:
        self.aligned_dir = Path(aligned_dir)
        al = read_table(aligned_parquet, ALIGNED).select(["sha256", "crop", "landmarks68"]).to_pylist()
        tm = {r["sha256"]: r for r in read_table(threedmm_parquet, THREEDMM)
              .select(["sha256", "shape", "expression", "pose", "camera"]).to_pylist()}
        self.rows = [(a, tm[a["sha256"]]) for a in al if a["sha256"] in tm]
        if not self.rows:
            raise ValueError(f"no rows of {aligned_parquet} have a fit in {threedmm_parquet}")
        for a, t in self.rows:
            if len(a["landmarks68"]) != 136:
                raise ValueError(f"{a['sha256']}: landmarks68 has {len(a['landmarks68'])} values, not 136")
        self.n_shape = len(self.rows[0][1]["shape"])
        self.n_exp = len(self.rows[0][1]["expression"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        a, t = self.rows[i]
        rgb = read_rgb(self.aligned_dir / a["crop"])  # (H, W, 3) uint8
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0

        def f32(v: list[float]) -> Tensor:
            return torch.tensor(v, dtype=torch.float32)

        return img, {"landmarks": f32(a["landmarks68"]).view(68, 2), "shape": f32(t["shape"]),
                     "expression": f32(t["expression"]), "pose": f32(t["pose"]),
                     "camera": f32(t["camera"])}


def train_regressor(aligned_parquet: str | os.PathLike, aligned_dir: str | os.PathLike,
                    threedmm_parquet: str | os.PathLike, cfg: RegressorConfig | None = None, *,
                    steps: int = 1000, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                    out_path: str | os.PathLike | None = None,
                    device: str | torch.device | None = None) -> dict[str, float]:
    """Train with Adam for ``steps`` batches; save safetensors atomically to ``out_path``.

    Returns ``{"initial_total", "final_<term>"..., "steps", "seconds", "n_rows"}`` where the
    final terms are from the last step's batch.
    """
    cfg = cfg or RegressorConfig()
    ds = FaceTableDataset(aligned_parquet, aligned_dir, threedmm_parquet)
    if (ds.n_shape, ds.n_exp) != (cfg.n_shape, cfg.n_exp):
        raise ValueError(f"{threedmm_parquet}: n_shape/n_exp = {ds.n_shape}/{ds.n_exp}, "
                         f"config expects {cfg.n_shape}/{cfg.n_exp}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model = FaceAttributeRegressor(cfg).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True,
                                         drop_last=True, generator=gen)
    t0, step, first, terms = time.perf_counter(), 0, None, {}
    while step < steps:
        for img, tgt in loader:
            img, tgt = img.to(dev), {k: v.to(dev) for k, v in tgt.items()}
            terms = regressor_loss(model(img), tgt, image_size=float(img.shape[-1]))
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            if first is None:
                first = float(terms["total"].detach())
            step += 1
            if step >= steps:
                break
    metrics = {"initial_total": first if first is not None else float("nan"),
               **{f"final_{k}": float(v.detach()) for k, v in terms.items()},
               "steps": float(step), "seconds": time.perf_counter() - t0, "n_rows": float(len(ds))}
    if out_path is not None:
        meta = {k: str(v) for k, v in asdict(cfg).items()} | {"seed": str(seed), "steps": str(step)}
        save_safetensors_atomic(model.state_dict(), out_path, metadata=meta)
    return metrics


def r_squared(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination pooled over all dimensions, (N, K) x (N, K): 1 - SSE / SST with
    SST about the per-dimension mean of `true`. 1 = perfect, 0 = predicting the mean, < 0 = worse."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    sst = ((true - true.mean(0)) ** 2).sum()
    return float(1.0 - ((pred - true) ** 2).sum() / sst) if sst > 0 else float("nan")


@torch.no_grad()
def evaluate_regressor(model: FaceAttributeRegressor, aligned_parquet: str | os.PathLike,
                       aligned_dir: str | os.PathLike, threedmm_parquet: str | os.PathLike, *,
                       batch_size: int = 64) -> dict[str, float]:
    """Held-out quality of the regressor on the rows of `aligned_parquet` (e.g. the val split):
    landmark NME (mean point error / crop side, and / inter-ocular distance of the reference
    landmarks), R² of shape and expression coefficients, pose MAE (degrees), row count."""
    ds = FaceTableDataset(aligned_parquet, aligned_dir, threedmm_parquet)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    preds: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
    trues: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
    side = None
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        img = torch.stack([x for x, _ in items]).to(dev)  # (B, 3, S, S)
        side = float(img.shape[-1])
        out = model(img)
        for k in HEADS:
            preds[k].append(out[k].float().cpu().numpy())
            trues[k].append(np.stack([t[k].numpy() for _, t in items]))
    model.train(was_training)
    p = {k: np.concatenate(v) for k, v in preds.items()}
    t = {k: np.concatenate(v) for k, v in trues.items()}
    err = np.linalg.norm(p["landmarks"] - t["landmarks"], axis=-1).mean(1)  # (N,) px
    iod = np.linalg.norm(t["landmarks"][:, 36:42].mean(1) - t["landmarks"][:, 42:48].mean(1), axis=-1)  # (N,)
    return {"landmark_nme_side": float(err.mean() / side), "landmark_nme_iod": float((err / iod).mean()),
            "shape_r2": r_squared(p["shape"], t["shape"]), "expression_r2": r_squared(p["expression"], t["expression"]),
            "pose_mae_deg": float(np.abs(p["pose"] - t["pose"]).mean()), "rows": float(len(ds))}


def load_regressor(path: str | os.PathLike, cfg: RegressorConfig | None = None, *,
                   device: str | torch.device = "cpu") -> FaceAttributeRegressor:
    """Strictly load weights into a frozen eval-mode regressor; raises WeightsError naming ``path``."""
    model = FaceAttributeRegressor(cfg or RegressorConfig())
    load_state_dict_file(model, path)
    model.eval().requires_grad_(False)
    return model.to(device)


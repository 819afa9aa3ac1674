"""Training the face-attribute regressor (faceswap_models.auxiliary.regressor) on the prepared tables:
the dataset of aligned crops with their landmark / 3DMM targets, augmentation that moves the targets
with the pixels, the training loop with val checkpoint selection, and held-out scoring (R², NME).
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from faceswap.core.images import read_rgb
from faceswap.core.schemas import ALIGNED, THREEDMM, read_table
from faceswap.core.weights import save_safetensors_atomic
from faceswap.training.config import RegressorAugment
from faceswap_models.auxiliary.regressor import (
    HEADS, FaceAttributeRegressor, RegressorConfig, normalised_targets, regressor_loss, resize_input,
)


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


class _Cached:
    """A FaceTableDataset held in memory at the model's working resolution: images (N, 3, s, s) uint8
    (resized exactly like the model resizes its input) and normalised targets (landmarks, tx, ty /
    crop side)."""

    def __init__(self, ds: FaceTableDataset, size: int) -> None:
        imgs, tgts = [], {k: [] for k in HEADS}
        for i in range(len(ds)):
            img, t = ds[i]
            side = float(img.shape[-1])
            imgs.append(((resize_input(img[None], size)[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8))
            for k, v in normalised_targets({k: v[None] for k, v in t.items()}, side).items():
                tgts[k].append(v[0])
        self.images = torch.stack(imgs)
        self.targets = {k: torch.stack(v) for k, v in tgts.items()}

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: Tensor, dev: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
        img = self.images[idx].to(dev).float() / 127.5 - 1.0
        return img, {k: v[idx].to(dev) for k, v in self.targets.items()}

    def stats(self, aug: RegressorAugment, seed: int, passes: int = 4) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-dimension (mean, std) of each head's normalised targets as training sees them (over
        `passes` augmented copies of the rows when `aug` moves targets); std floored at 1e-3."""
        gen = torch.Generator().manual_seed(seed)
        moved = aug.scale or aug.shift or aug.rotate
        ts = [augment_sample(None, self.targets, aug, gen)[1] for _ in range(passes)] if moved else [self.targets]
        cat = {k: torch.cat([t[k] for t in ts]) for k in HEADS}
        return {k: (v.mean(0), v.std(0, unbiased=False).clamp_min(1e-3)) for k, v in cat.items()}


def augment_sample(img: Tensor | None, t: dict[str, Tensor], aug: RegressorAugment,
             gen: torch.Generator) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Random similarity warp + colour jitter of a batch; targets normalised (`_Cached`), moved with it
    (``img`` None: the targets only, same random draws).

    In coordinates u = 2 * x / side - 1 a point maps to u' = a R(theta) u + d. With the orthographic
    camera P = s (R_pose X)_xy + t that is s' = a s, t' = a R t + d (t in u coordinates) and
    roll' = roll + theta (R_pose = Rz(roll) @ ..., y down), so the 3DMM targets stay exact.
    """
    b = t["pose"].shape[0]
    dev = t["pose"].device

    def unif(amp: float, n: int = 1) -> Tensor:
        return ((torch.rand(b, n, generator=gen) * 2 - 1) * amp).to(dev)

    t = dict(t)
    if aug.scale or aug.shift or aug.rotate:
        a = 1.0 + unif(aug.scale)  # (B, 1)
        th = unif(aug.rotate)[:, 0]  # (B,) degrees
        d = unif(2.0 * aug.shift, 2)  # (B, 2) in u units (a side is 2 long)
        c, s = torch.cos(torch.deg2rad(th)), torch.sin(torch.deg2rad(th))
        m = a[:, :, None] * torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1)  # (B, 2, 2)
        if img is not None:
            inv = torch.linalg.inv(m)
            theta = torch.cat([inv, -(inv @ d[:, :, None])], 2)  # output -> input sampling
            grid = F.affine_grid(theta, list(img.shape), align_corners=False)
            img = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

        def move(p: Tensor) -> Tensor:  # (B, N, 2) fractions of the side
            return ((torch.einsum("bij,bnj->bni", m, p * 2 - 1) + d[:, None]) + 1) / 2

        t["landmarks"] = move(t["landmarks"])
        cam = t["camera"]
        t["camera"] = torch.cat([cam[:, :1] * a, move(cam[:, None, 1:])[:, 0]], 1)
        t["pose"] = torch.cat([t["pose"][:, :2], t["pose"][:, 2:] + th[:, None]], 1)
    if aug.brightness or aug.contrast or aug.saturation:
        sat, con, bri = (unif(v)[:, :, None, None] for v in (aug.saturation, aug.contrast, aug.brightness))
        if img is not None:
            gray = img.mean(1, keepdim=True)  # (B, 1, H, W)
            img = gray + (img - gray) * (1 + sat)
            mu = img.mean((1, 2, 3), keepdim=True)
            img = (mu + (img - mu) * (1 + con) + bri).clamp(-1, 1)
    return img, t


def _metrics(p: dict[str, np.ndarray], t: dict[str, np.ndarray], side: float) -> dict[str, float]:
    err = np.linalg.norm(p["landmarks"] - t["landmarks"], axis=-1).mean(1)  # (N,) px
    iod = np.linalg.norm(t["landmarks"][:, 36:42].mean(1) - t["landmarks"][:, 42:48].mean(1), axis=-1)  # (N,)
    return {"landmark_nme_side": float(err.mean() / side), "landmark_nme_iod": float((err / iod).mean()),
            "shape_r2": r_squared(p["shape"], t["shape"]), "expression_r2": r_squared(p["expression"], t["expression"]),
            "pose_mae_deg": float(np.abs(p["pose"] - t["pose"]).mean()), "rows": float(len(err))}


@torch.no_grad()
def _evaluate_cached(model: FaceAttributeRegressor, data: _Cached, dev: torch.device,
                     batch_size: int = 128) -> dict[str, float]:
    """`evaluate_regressor`'s figures on a `_Cached` set (its images are already at the model's size)."""
    was_training = model.training
    model.eval()
    preds: dict[str, list[Tensor]] = {k: [] for k in HEADS}
    for i in range(0, len(data), batch_size):
        img, _ = data.batch(torch.arange(i, min(i + batch_size, len(data))), dev)
        for k, v in normalised_targets(model(img), float(img.shape[-1])).items():
            preds[k].append(v.float().cpu())
    model.train(was_training)
    p = {k: torch.cat(v) for k, v in preds.items()}
    loss = regressor_loss(p, data.targets, image_size=1.0, std={k: v.cpu() for k, v in model.target_std().items()})
    return _metrics({k: v.numpy() for k, v in p.items()}, {k: v.numpy() for k, v in data.targets.items()}, 1.0) | {
        f"loss_{k}": float(v) for k, v in loss.items()}


def train_regressor(aligned_parquet: str | os.PathLike, aligned_dir: str | os.PathLike,
                    threedmm_parquet: str | os.PathLike, cfg: RegressorConfig | None = None, *,
                    steps: int = 1000, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
                    head_weight_decay: float = 0.0, warmup: int = 0, seed: int = 0,
                    augment: RegressorAugment | None = None,
                    val_parquet: str | os.PathLike | None = None, eval_every: int = 0,
                    out_path: str | os.PathLike | None = None,
                    device: str | torch.device | None = None) -> dict[str, float]:
    """Train with AdamW (linear warm-up over ``warmup`` steps, then cosine decay to lr / 100) on
    standardised targets; save safetensors atomically to ``out_path``.

    The per-head target statistics come from the training rows and are stored in the model.
    ``head_weight_decay``: AdamW decay of the shape / expression head weights (they overfit first).
    ``augment`` (default none): `RegressorAugment`. With ``val_parquet`` and ``eval_every`` > 0 the
    model is scored on those rows every ``eval_every`` steps and at the end, and the weights with
    the lowest landmark NME are kept (early stopping by checkpoint selection).
    Returns ``{"initial_total", "final_<term>"..., "steps", "seconds", "n_rows"}`` (final terms
    from the last step's batch), plus ``best_step`` and ``best_val_landmark_nme_side`` with val.
    """
    cfg = cfg or RegressorConfig()
    aug = augment or RegressorAugment.off()
    ds = FaceTableDataset(aligned_parquet, aligned_dir, threedmm_parquet)
    if (ds.n_shape, ds.n_exp) != (cfg.n_shape, cfg.n_exp):
        raise ValueError(f"{threedmm_parquet}: n_shape/n_exp = {ds.n_shape}/{ds.n_exp}, "
                         f"config expects {cfg.n_shape}/{cfg.n_exp}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    train = _Cached(ds, cfg.image_size)
    val = (_Cached(FaceTableDataset(val_parquet, aligned_dir, threedmm_parquet), cfg.image_size)
           if val_parquet is not None and eval_every > 0 else None)
    torch.manual_seed(seed)
    model = FaceAttributeRegressor(cfg)
    model.set_target_stats(train.stats(aug, seed + 1))
    model = model.to(dev).train()
    opt = _optimizer(model, lr, weight_decay, head_weight_decay)
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, len(train))
    std = model.target_std()
    first, terms, order = None, {}, torch.empty(0, dtype=torch.long)
    best = (math.inf, 0, None)  # (val NME, step, state)
    for step in range(steps):
        if len(order) < bs:  # reshuffle per epoch, drop the last partial batch
            order = torch.randperm(len(train), generator=gen)
        idx, order = order[:bs], order[bs:]
        img, tgt = augment_sample(*train.batch(idx, dev), aug, gen)
        terms = regressor_loss(normalised_targets(model(img), float(img.shape[-1])), tgt, image_size=1.0, std=std)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, lr, warmup, steps)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        if first is None:
            first = float(terms["total"].detach())
        if val is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            nme = _evaluate_cached(model, val, dev)["landmark_nme_side"]
            if nme < best[0]:  # the weights with the best val landmark NME so far
                best = (nme, step + 1, copy.deepcopy(model.state_dict()))
    metrics = {"initial_total": first if first is not None else float("nan"),
               **{f"final_{k}": float(v.detach()) for k, v in terms.items()},
               "steps": float(steps), "seconds": time.perf_counter() - t0, "n_rows": float(len(train))}
    if best[2] is not None:
        model.load_state_dict(best[2])
        metrics |= {"best_step": float(best[1]), "best_val_landmark_nme_side": best[0]}
    if out_path is not None:
        meta = {k: str(v) for k, v in asdict(cfg).items()} | {"seed": str(seed), "steps": str(steps),
                                                             "best_step": str(best[1] or steps)}
        save_safetensors_atomic(model.state_dict(), out_path, metadata=meta)
    return metrics


def _optimizer(model: FaceAttributeRegressor, lr: float, weight_decay: float,
               head_weight_decay: float) -> torch.optim.AdamW:
    """AdamW: `weight_decay` on conv / linear weights, `head_weight_decay` on the shape / expression head
    weights (ridge-like: these heads overfit first), none on norms and biases."""
    coef = ("head_shape.weight", "head_expression.weight")
    groups = {"decay": [], "coef": [], "none": []}
    for n, prm in model.named_parameters():
        groups["coef" if n in coef else "decay" if prm.ndim > 1 else "none"].append(prm)
    return torch.optim.AdamW([{"params": groups["decay"], "weight_decay": weight_decay},
                              {"params": groups["coef"], "weight_decay": head_weight_decay},
                              {"params": groups["none"], "weight_decay": 0.0}], lr=lr)


def cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr / 100 at `steps` (step 0-based)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac)))


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
    """Held-out quality of the regressor on the rows of `aligned_parquet` (e.g. the val split), fed
    the full-size crops: landmark NME (mean point error / crop side, and / inter-ocular distance of
    the reference landmarks), R² of shape and expression coefficients, pose MAE (degrees), rows."""
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
    return _metrics({k: np.concatenate(v) for k, v in preds.items()},
                    {k: np.concatenate(v) for k, v in trues.items()}, side)

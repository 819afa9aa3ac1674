"""train_aux learns: on synthetic faces whose pixels carry the targets, a short stage run beats
predicting the training mean on held-out identities (landmark NME, shape and expression R²).

Each face is 68 coloured dots: a fixed template deformed by the identity's shape coefficients
(width, height, eye spacing) and the face's expression (mouth opening, brow raise), then rotated by
the roll and placed by the camera (scale, tx, ty). Yaw and pitch are not drawn (no assertion on
them). The conftest tables cannot serve here: their pixels are noise unrelated to the targets.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from faceswap.core import schemas
from faceswap.training.runs import DataPaths

CROP = 64
GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "mouth": range(48, 68)}
COLOURS = {"jaw": (230, 200, 170), "brows": (90, 60, 30), "nose": (250, 120, 120), "eyes": (60, 200, 250),
           "mouth": (220, 40, 60)}


def _template() -> np.ndarray:
    """(68, 2) schematic face in units of the camera scale, x right, y down."""
    t = np.zeros((68, 2))
    a = np.linspace(math.pi * 0.05, math.pi * 0.95, 17)
    t[0:17] = np.c_[-np.cos(a), 0.2 + 0.9 * np.sin(a)]  # jaw
    t[17:27] = np.c_[np.r_[np.linspace(-0.8, -0.2, 5), np.linspace(0.2, 0.8, 5)], np.full(10, -0.55)]
    t[27:36] = np.c_[np.r_[np.zeros(4), np.linspace(-0.25, 0.25, 5)],
                     np.r_[np.linspace(-0.35, 0.05, 4), np.full(5, 0.2)]]  # bridge, nostrils
    ang = np.linspace(0, 2 * math.pi, 6, endpoint=False)
    eye = np.c_[0.18 * np.cos(ang), 0.08 * np.sin(ang)]
    t[36:42], t[42:48] = eye + [-0.45, -0.3], eye + [0.45, -0.3]
    ang = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    t[48:68] = np.c_[0.4 * np.cos(ang), 0.55 + 0.12 * np.sin(ang)]
    return t


def _face(beta: np.ndarray, psi: np.ndarray, roll: float, cam: np.ndarray) -> np.ndarray:
    """Landmarks (68, 2) in crop pixels."""
    p = _template()
    p[:, 0] *= 1 + 0.15 * beta[0]
    p[:, 1] *= 1 + 0.15 * beta[1]
    p[36:48, 0] += np.sign(p[36:48, 0]) * 0.08 * beta[2]  # eye spacing
    p[48:68, 1] += 0.25 * psi[0] * np.sign(p[48:68, 1] - 0.55)  # mouth opening
    p[17:27, 1] -= 0.2 * psi[1]  # brow raise
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    return cam[0] * p @ np.array([[c, -s], [s, c]]).T + cam[1:]


def _render(lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.clip(rng.integers(20, 90, 3) + rng.normal(0, 6, (CROP, CROP, 3)), 0, 255).astype(np.uint8)
    for g, idx in GROUPS.items():
        for x, y in lm[list(idx)]:
            cv2.circle(img, (int(round(x * 4)), int(round(y * 4))), 4, COLOURS[g], -1, cv2.LINE_AA, shift=2)
    return img


@pytest.fixture(scope="module")
def drawn_tables(tmp_path_factory) -> DataPaths:
    """16 train identities x 8 faces, 5 val identities x 6 faces, 64 px crops, n_shape 3, n_exp 2."""
    root = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(0)
    aligned, segments, tdmm, splits = [], [], [], []
    faces = [(f"id_{i}", k, "train") for i in range(16) for k in range(8)]
    faces += [(f"val_{i}", k, "val") for i in range(5) for k in range(6)]
    betas: dict[str, np.ndarray] = {}
    for ident, k, split in faces:
        sha = hashlib.sha256(f"{ident}/{k}".encode()).hexdigest()
        rel = f"{sha[:2]}/{sha}.png"
        beta = betas.setdefault(ident, rng.normal(size=3))
        psi = rng.normal(size=2)
        pose = np.array([rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-8, 8)])
        cam = np.array([17 * (1 + 0.06 * rng.normal()), 32 + 1.5 * rng.normal(), 30 + 1.5 * rng.normal()])
        lm = _face(beta, psi, pose[2], cam)
        for sub, arr in (("aligned", _render(lm, rng)), ("parsing", np.zeros((CROP, CROP), np.uint8))):
            (root / sub / rel).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / sub / rel), cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr)
        aligned.append({"sha256": sha, "identity": ident, "path": f"raw/{ident}/{k}.jpg", "crop": rel, "size": CROP,
                        "matrix": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "landmarks68": lm.ravel().tolist(),
                        "landmarks5": np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48],
                                                lm[54]]).ravel().tolist()})
        segments.append({"sha256": sha, "identity": ident, "parsing": rel, "class_fractions": [1.0]})
        tdmm.append({"sha256": sha, "identity": ident, "shape": beta.tolist(), "expression": psi.tolist(),
                     "pose": pose.tolist(), "camera": cam.tolist(), "contour2d": lm[:17].ravel().tolist(),
                     "fit_rmse": 0.0})
        splits.append({"sha256": sha, "identity": ident, "split": split})
    for rows, name, schema in ((aligned, "aligned", schemas.ALIGNED), (segments, "segments", schemas.SEGMENTS),
                               (tdmm, "threedmm", schemas.THREEDMM), (splits, "splits", schemas.SPLITS)):
        schemas.write_table(rows, root / f"{name}.parquet", schema)
    return DataPaths(aligned=str(root / "aligned.parquet"), aligned_dir=str(root / "aligned"),
                     segments=str(root / "segments.parquet"), parsing_dir=str(root / "parsing"),
                     threedmm=str(root / "threedmm.parquet"), threedmm_model=str(root / "unused.npz"),
                     splits=str(root / "splits.parquet")).resolved()


def _mean_baseline(data: DataPaths) -> dict[str, float]:
    """Val figures of predicting the training mean for every face."""
    from faceswap.training.regressor import r_squared

    tr, va = data.records("train"), data.records("val")
    t = schemas.read_table(data.threedmm, schemas.THREEDMM).to_pylist()
    by = {r["sha256"]: r for r in t}

    def col(recs, k):
        return np.array([by[s][k] for s in recs.sha256])

    err = np.linalg.norm(va.landmarks68 - tr.landmarks68.mean(0), axis=-1).mean()
    out = {"landmark_nme_side": float(err / CROP)}
    for k in ("shape", "expression"):
        out[f"{k}_r2"] = r_squared(np.repeat(col(tr, k).mean(0, keepdims=True), len(va.sha256), 0), col(va, k))
    return out


def test_short_train_aux_run_beats_the_training_mean_on_held_out_identities(drawn_tables, tmp_path):
    from stages import train_aux

    torch.set_num_threads(1)
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["train_aux"].update({"steps": 300, "batch_size": 16, "eval_every": 50, "warmup": 20,
                                "model": {"image_size": 64, "width": 8, "hidden": 32, "dropout": 0.0,
                                          "n_shape": 3, "n_exp": 2}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    m = train_aux.run(drawn_tables, tmp_path / "aux", tmp_path / "params.yaml")
    base = _mean_baseline(drawn_tables)
    assert m["val_rows"] == 30 and m["n_rows"] == 128
    assert m["val_landmark_nme_side"] < 0.7 * base["landmark_nme_side"], (m, base)
    assert m["val_shape_r2"] > 0.3 and m["val_expression_r2"] > 0.2, (m, base)
    assert base["shape_r2"] < 0.05 and base["expression_r2"] < 0.05

"""Shared fixtures for the training tests: a tiny synthetic set of prepared tables."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceswap.core import schemas
from faceswap.faces.threedmm import Coefficients, LinearFaceModel

CROP = 64  # stored crop side of the synthetic set
N_IDS, PER_ID = 4, 4  # train split: 16 faces
N_VERT, N_SHAPE, N_EXP, K = 30, 3, 2, 6


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_face_model(seed: int = 0) -> LinearFaceModel:
    """A random but well-formed linear 3DMM: 30 vertices, 3 shape + 2 expression dims, K=6 contour."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(N_VERT, 3))
    mean = (mean - mean.mean(0)) / np.sqrt((mean**2).sum(1).mean())
    return LinearFaceModel(
        mean=mean,
        id_basis=0.05 * rng.normal(size=(N_SHAPE, N_VERT, 3)),
        exp_basis=0.03 * rng.normal(size=(N_EXP, N_VERT, 3)),
        contour_idx=np.arange(K, dtype=np.int64),
    )


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    assert cv2.imwrite(str(path), img)


@pytest.fixture(scope="session")
def train_tables(tmp_path_factory) -> dict[str, str]:
    """Prepared tables like the data stages write them (real schemas, content-addressed PNGs).

    Train split: 4 identities x 4 faces (id_0..id_3), 64x64 crops. Extras that loading must leave
    out: identity id_val with 2 faces in the val split, and one aligned face with no parsing,
    3DMM or split row. The 3DMM rows are consistent with `threedmm_model` (contour2d = its
    projection). Returns paths: aligned_parquet, aligned_dir, segments_parquet, parsing_dir,
    threedmm_parquet, threedmm_model, splits_parquet.
    """
    root = tmp_path_factory.mktemp("train_tables")
    rng = np.random.default_rng(0)
    model = tiny_face_model()
    paths = {
        "aligned_parquet": root / "aligned.parquet", "aligned_dir": root / "aligned",
        "segments_parquet": root / "segments.parquet", "parsing_dir": root / "parsing",
        "threedmm_parquet": root / "threedmm.parquet", "threedmm_model": root / "threedmm_model.npz",
        "splits_parquet": root / "splits.parquet",
    }
    model.save(paths["threedmm_model"])
    faces = [(f"id_{i}", k, "train") for i in range(N_IDS) for k in range(PER_ID)]
    faces += [("id_val", k, "val") for k in range(2)] + [("id_orphan", 0, None)]
    aligned, segments, tdmm, splits = [], [], [], []
    id_shape: dict[str, np.ndarray] = {}  # identity coefficients shared by an identity's faces
    for n, (ident, k, split) in enumerate(faces):
        sha = hashlib.sha256(f"{ident}/{k}".encode()).hexdigest()
        rel = f"{sha[:2]}/{sha}.png"
        tint = rng.integers(0, 256, 3)
        img = np.clip(tint + rng.normal(0, 40, (CROP, CROP, 3)), 0, 255).astype(np.uint8)
        _write_png(paths["aligned_dir"] / rel, img)
        labels = np.repeat(np.repeat(rng.integers(0, 7, (8, 8)), 8, 0), 8, 1).astype(np.uint8)  # (64, 64)
        _write_png(paths["parsing_dir"] / rel, labels)
        aligned.append({
            "sha256": sha, "identity": ident, "path": f"raw/{ident}/{k}.jpg", "crop": rel, "size": CROP, "template_scale": 1.4,
            "matrix": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "landmarks5": rng.uniform(8, 56, 10).tolist(), "landmarks68": rng.uniform(8, 56, 136).tolist(),
        })
        if split is None:
            continue  # the orphan: aligned only
        c = Coefficients(
            shape=id_shape.setdefault(ident, rng.normal(size=N_SHAPE)) + 0.1 * rng.normal(size=N_SHAPE),
            expression=rng.normal(size=N_EXP),
            pose=np.array([rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-5, 5)]),
            camera=np.array([rng.uniform(18, 22), 32 + rng.normal(), 34 + rng.normal()]),
        )
        tdmm.append({"sha256": sha, "identity": ident, **c.as_row(),
                     "contour2d": model.contour2d(c).astype(np.float32).ravel().tolist()})
        segments.append({"sha256": sha, "identity": ident, "parsing": rel,
                         "class_fractions": np.bincount(labels.ravel(), minlength=7).astype(np.float32).tolist()})
        splits.append({"sha256": sha, "identity": ident, "split": split})
    schemas.write_table(aligned, paths["aligned_parquet"], schemas.ALIGNED)
    schemas.write_table(segments, paths["segments_parquet"], schemas.SEGMENTS)
    schemas.write_table(tdmm, paths["threedmm_parquet"], schemas.THREEDMM)
    schemas.write_table(splits, paths["splits_parquet"], schemas.SPLITS)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def train_records(train_tables):
    """FaceRecords of the train split of `train_tables`."""
    from faceswap.data.records import FaceRecords

    t = train_tables
    return FaceRecords.load(t["aligned_parquet"], t["aligned_dir"], t["segments_parquet"], t["parsing_dir"],
                            t["threedmm_parquet"], t["splits_parquet"], split="train")

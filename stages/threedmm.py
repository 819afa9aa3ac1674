"""threedmm: per aligned face, 3DMM coefficients (shape beta, expression psi, pose, camera) and
the projected 2D contour landmarks -> threedmm.parquet (+ the face model file).

Backends: `learned` (offline default: a linear model learned from the data's own mediapipe 3D
meshes — identity basis from between-identity variation, expression basis from within-identity
variation; see docs/threedmm.md) and `file` (a user-supplied linear 3DMM .npz, e.g. converted
FLAME/BFM/SFM, same layout). Meshes are cached per content hash in a persistent directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faceswap import params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import PrepConfig, ThreeDMMConfig
from faceswap.core.executor import map_items
from faceswap.core.images import read_rgb
from faceswap.core.io import atomic_path, fingerprint, remove_stale
from faceswap.core.layout import DATA
from faceswap.core.schemas import ALIGNED, REJECTS, THREEDMM, read_table, write_table
from faceswap.faces.threedmm import LinearFaceModel, MeshLandmarker, learn_model, mesh_name
from faceswap.faces.threedmm_cv import expression_cv, shape_icc

LEARN_VERSION = 2  # bump when learn_model changes: invalidates cached learned models


def _mesh_one(state, item: tuple[str, str]) -> bool:
    """Compute and store the mesh of one crop; False when mediapipe finds no face."""
    landmarker, = state
    crop_path, out_path = item
    mesh = landmarker(read_rgb(crop_path))
    if mesh is None:
        return False
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, mesh.astype(np.float32))
    return True


def _landmarker_state():
    return (MeshLandmarker(),)


def learning_sample(rows: list[dict], max_faces: int) -> list[dict]:
    """A deterministic sample of at most `max_faces` rows, evenly spaced in content-hash order."""
    if len(rows) <= max_faces:
        return rows
    ranked = sorted(rows, key=lambda r: r["sha256"])
    step = len(ranked) / max_faces
    return [ranked[int(i * step)] for i in range(max_faces)]


def _face_model(cfg: ThreeDMMConfig, ok_rows: list[dict], mesh_dir: Path,
                cache_dir: str | Path | None) -> tuple[LinearFaceModel, bool]:
    """(model, learned this run): the user's file, or one learned from the meshes and reused from
    the cache while the learning sample (mesh hashes + labels) and sizes are unchanged."""
    if cfg.backend == "file":
        if not cfg.model_file:
            raise ValueError("threedmm.backend=file needs threedmm.model_file (a local .npz)")
        return LinearFaceModel.load(cfg.model_file), False
    sample = learning_sample(ok_rows, cfg.learn_max_faces)
    if len({r["identity"] for r in sample}) < 2:
        raise ValueError("threedmm: the learned model needs meshes from at least 2 identities")
    key = fingerprint(LEARN_VERSION, cfg.n_shape, cfg.n_exp, sorted((mesh_name(r), r["identity"]) for r in sample))
    cached = Path(cache_dir) / f"threedmm_learned-{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        return LinearFaceModel.load(cached), False
    meshes = np.stack([np.load(mesh_dir / mesh_name(r)) for r in sample])  # (n, 468, 3)
    model = learn_model(meshes, [r["identity"] for r in sample], cfg.n_shape, cfg.n_exp)
    if cached is not None:
        for old in cached.parent.glob("threedmm_learned-*.npz"):
            old.unlink(missing_ok=True)
        model.save(cached)
    return model, True


def run(cfg: ThreeDMMConfig, aligned: str | Path, aligned_dir: str | Path, mesh_dir: str | Path,
        out_table: str | Path, out_model: str | Path, out_rejects: str | Path,
        cache_dir: str | Path | None = None, prep: PrepConfig | None = None) -> dict:
    mesh_dir = Path(mesh_dir)
    rows = read_table(aligned, ALIGNED).to_pylist()
    todo = [r for r in rows if not (mesh_dir / mesh_name(r)).exists()]
    items = [(str(Path(aligned_dir) / r["crop"]), str(mesh_dir / mesh_name(r))) for r in todo]
    found = dict(zip((r["sha256"] for r in todo),
                     map_items(_mesh_one, items, _landmarker_state, cfg.workers, prep, desc="threedmm mesh")))
    ok_rows, rejects = [], []
    for r in rows:
        if found.get(r["sha256"], True) and (mesh_dir / mesh_name(r)).exists():
            ok_rows.append(r)
        else:
            rejects.append({"path": r["path"], "identity": r["identity"], "sha256": r["sha256"],
                            "reason": "no_mesh", "detail": "mediapipe face mesh found no face in the aligned crop"})
    model, learned = _face_model(cfg, ok_rows, mesh_dir, cache_dir)
    model.save(out_model)
    model = LinearFaceModel.load(out_model)  # fit with exactly what downstream stages will load
    out_rows = []
    for r in ok_rows:  # streaming: one mesh in memory at a time
        c = model.fit(np.load(mesh_dir / mesh_name(r)))
        out_rows.append({"sha256": r["sha256"], "identity": r["identity"], **c.as_row(),
                         "contour2d": model.contour2d(c).astype(np.float32).reshape(-1).tolist()})
    write_table(out_rows, out_table, THREEDMM)
    write_table(rejects, out_rejects, REJECTS)
    remove_stale(mesh_dir, "*.npy", {mesh_name(r) for r in rows})
    rmse = [r["fit_rmse"] for r in out_rows]
    yaw = [abs(r["pose"][0]) for r in out_rows]
    icc = shape_icc(np.array([r["shape"] for r in out_rows]).reshape(len(out_rows), -1),
                    [r["identity"] for r in out_rows])
    return {"faces": len(out_rows), "no_mesh": len(rejects), "meshed_this_run": len(todo),
            "model_learned_this_run": learned,
            "n_shape": model.n_shape, "n_exp": model.n_exp,
            "fit_rmse_median_px": float(np.median(rmse)) if rmse else None,
            "abs_yaw_median_deg": float(np.median(yaw)) if yaw else None,
            "shape_icc_pooled": icc["pooled"], "shape_icc_min": icc["min"], "shape_icc_median": icc["median"],
            "expression_cv": _expression_cv(cfg, ok_rows, mesh_dir, model)}


def _expression_cv(cfg: ThreeDMMConfig, ok_rows: list[dict], mesh_dir: Path, model: LinearFaceModel) -> dict:
    """`threedmm_cv.expression_cv` of the fitted faces against their face-mesh expression measures
    (`features.mesh_expression`): learned backend, a model learned per fold (same sizes and learning-sample
    bound as the stage's model); file backend, the user's model in every fold."""
    from faceswap.evaluation.features import EXPRESSION_MEASURES, mesh_expression  # lazy: imports torch

    rows = sorted(ok_rows, key=lambda r: r["sha256"])  # so the per-fold sample matches learning_sample
    meshes = np.stack([np.load(mesh_dir / mesh_name(r)) for r in rows]) if rows else np.zeros((0, 468, 3))
    measures = np.stack([mesh_expression(m) for m in meshes]) if rows else np.zeros((0, len(EXPRESSION_MEASURES)))
    return expression_cv(meshes, [r["identity"] for r in rows], measures, EXPRESSION_MEASURES, cfg.n_shape,
                         cfg.n_exp, model=model if cfg.backend == "file" else None,
                         max_learn_faces=cfg.learn_max_faces)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--aligned", default=str(DATA.aligned))
    p.add_argument("--aligned-dir", default=str(DATA.aligned_dir))
    p.add_argument("--mesh-dir", default=str(DATA.mesh_dir))
    p.add_argument("--out", default=str(DATA.threedmm))
    p.add_argument("--model-out", default=str(DATA.threedmm_model))
    p.add_argument("--rejects", default=str(DATA.threedmm_rejects))
    a = p.parse_args(argv)
    p = params.load(a.params)
    m = run(p.threedmm, a.aligned, a.aligned_dir, a.mesh_dir, a.out, a.model_out, a.rejects, a.cache_dir, p.prep)
    write_metrics(a.metrics, m)
    print(f"threedmm: {m['faces']} fitted ({m['meshed_this_run']} meshed this run), {m['no_mesh']} without mesh, "
          f"median rmse {m['fit_rmse_median_px']} px")
    cv = m["expression_cv"]
    print("threedmm: expression CV " + (f"skipped ({cv['skipped']})" if cv["skipped"] else
          f"{cv['folds']} folds, out-of-fold R2 " + ", ".join(f"{k} {v:.2f}" for k, v in cv["r2"].items()
                                                               if v is not None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

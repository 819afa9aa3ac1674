"""Offline default 3DMM: a linear face model learned from dense 3D landmarks (mediapipe FaceMesh).

Model (vertex correspondence = the 468 mediapipe FaceMesh landmarks for the learned default)::

    X(beta, psi) = mean + sum_i beta_i * id_basis[i] + sum_j psi_j * exp_basis[j]   # (V, 3)
    P            = s * (R(yaw, pitch, roll) @ X.T).T[:, :2] + (tx, ty)              # (V, 2), orthographic

Frames and conventions (shared by every backend, see docs/threedmm.md):
- canonical (model) frame: x to image right, y down, z away from the camera (right-handed, like
  mediapipe's crop coordinates); frontal, upright face centred at the origin; the learned mean has
  RMS vertex radius 1, so `s` is the face's RMS radius in crop pixels.
- R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch) with the right-handed elementary rotations. Hence
  yaw > 0: the nose turns toward image right; pitch > 0: the nose turns up (chin up);
  roll > 0: clockwise in-plane rotation as displayed (y down). Mirroring the image flips the sign
  of yaw and roll and leaves pitch unchanged.
- coefficients are scaled to unit variance over the training data (identity: across identities,
  expression: within identities), so a N(0, 1) prior is the natural regulariser.

FlowFace++ (Eq. 16) P12 = contour points of the mesh with identity of face 1 and expression, pose,
camera of face 2: `build_p12`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.linalg

from faceswap.core.io import atomic_path

log = logging.getLogger(__name__)

N_MESH = 468  # mediapipe FaceMesh vertices without iris refinement

# Bilateral mediapipe landmark pairs (image-left index, image-right index) used to fix the
# canonical x axis (facial symmetry): eye outer/inner corners, mouth corners, face-oval sides.
_SYM_PAIRS = ((33, 263), (133, 362), (61, 291), (234, 454), (93, 323), (132, 361), (58, 288), (127, 356))
_EYE_IDX = (33, 133, 263, 362)


# ----------------------------------------------------------------------------- coefficients


@dataclass(frozen=True, eq=False)
class Coefficients:
    """3DMM fit of one face. `camera` and projections are in crop pixels."""

    shape: np.ndarray  # (n_shape,) identity beta
    expression: np.ndarray  # (n_exp,) psi
    pose: np.ndarray  # (3,) yaw, pitch, roll in degrees
    camera: np.ndarray  # (3,) scale s, tx, ty
    rmse: float = float("nan")  # 3D landmark residual after the fit, crop pixels

    def as_row(self) -> dict[str, Any]:
        """Plain lists for a Parquet row (schemas.THREEDMM columns, without contour2d/ids)."""
        return {
            "shape": self.shape.astype(np.float32).tolist(),
            "expression": self.expression.astype(np.float32).tolist(),
            "pose": self.pose.astype(np.float32).tolist(),
            "camera": self.camera.astype(np.float32).tolist(),
            "fit_rmse": float(self.rmse),
        }

    def replace(self, **kw: Any) -> "Coefficients":
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------- rotations


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_pose(pose_deg: Sequence[float]) -> np.ndarray:
    """(yaw, pitch, roll) degrees -> R (3, 3) = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)."""
    yaw, pitch, roll = (math.radians(float(v)) for v in pose_deg)
    return _rz(roll) @ _ry(-yaw) @ _rx(-pitch)


def pose_from_rotation(r: np.ndarray) -> np.ndarray:
    """Inverse of `rotation_from_pose`: R (3, 3) -> (yaw, pitch, roll) degrees, yaw in [-90, 90]."""
    beta = -math.asin(max(-1.0, min(1.0, float(r[2, 0]))))  # Ry angle
    alpha = math.atan2(float(r[2, 1]), float(r[2, 2]))  # Rx angle
    gamma = math.atan2(float(r[1, 0]), float(r[0, 0]))  # Rz angle
    return np.degrees(np.array([-beta, -alpha, gamma]))


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: s, R (proper, det=+1), t minimising ||dst - (s R src + t)||^2; src, dst (V, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)  # (3, 3)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = float((xs**2).sum() / len(src))
    s = float((sig * d).sum() / var_s) if var_s > 0 else 1.0
    return s, r, mu_d - s * r @ mu_s


# ----------------------------------------------------------------------------- backend protocol


@runtime_checkable
class FaceModel(Protocol):
    """What the threedmm stage needs from a 3DMM backend (learned default, FLAME, BFM, SFM...).

    `fit` takes the landmarker's (468, 3) crop-pixel points; all outputs are in crop pixels.
    """

    @property
    def n_shape(self) -> int: ...

    @property
    def n_exp(self) -> int: ...

    def fit(self, points: np.ndarray, iters: int = 5, reg: float = 1e-3) -> Coefficients: ...

    def reconstruct(self, coeffs: Coefficients) -> np.ndarray: ...  # (V, 3) canonical frame

    def project(self, coeffs: Coefficients) -> np.ndarray: ...  # (V, 2) crop pixels

    def contour2d(self, coeffs: Coefficients) -> np.ndarray: ...  # (K, 2) crop pixels

    def build_p12(self, c1: Coefficients, c2: Coefficients) -> np.ndarray: ...  # (K, 2)


# ----------------------------------------------------------------------------- linear model


@dataclass(frozen=True, eq=False)
class LinearFaceModel:
    """Linear 3DMM in the canonical frame. npz layout = these field names (see docs/threedmm.md).

    landmark_idx: optional (V,) index of each model vertex into the landmarker's 468 points, for
    user models whose vertices are a subset/resampling of mediapipe landmarks; None = identity.
    """

    mean: np.ndarray  # (V, 3)
    id_basis: np.ndarray  # (n_shape, V, 3)
    exp_basis: np.ndarray  # (n_exp, V, 3)
    contour_idx: np.ndarray  # (K,) int, ordered along the jaw line
    landmark_idx: np.ndarray | None = None  # (V,) int or None

    def __post_init__(self) -> None:
        _validate(self, "LinearFaceModel")

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.id_basis.shape[0])

    @property
    def n_exp(self) -> int:
        return int(self.exp_basis.shape[0])

    # --- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write an uncompressed npz atomically (temp + rename)."""
        arrays = {
            "mean": self.mean.astype(np.float32),
            "id_basis": self.id_basis.astype(np.float32),
            "exp_basis": self.exp_basis.astype(np.float32),
            "contour_idx": self.contour_idx.astype(np.int64),
        }
        if self.landmark_idx is not None:
            arrays["landmark_idx"] = self.landmark_idx.astype(np.int64)
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearFaceModel":
        """Read a model npz (learned or user-converted); ValueError naming the file if unusable."""
        path = Path(path)
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an npz archive")
            with z:
                missing = {"mean", "id_basis", "exp_basis", "contour_idx"} - set(z.files)
                if missing:
                    raise ValueError(f"missing arrays {sorted(missing)}")
                arr = {k: np.asarray(z[k]) for k in z.files}
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"3DMM model file {path}: not a usable npz ({e})") from e
        try:
            return cls(
                mean=_as_float(arr["mean"]),
                id_basis=_as_float(arr["id_basis"]),
                exp_basis=_as_float(arr["exp_basis"]),
                contour_idx=_as_int(arr["contour_idx"]),
                landmark_idx=_as_int(arr["landmark_idx"]) if "landmark_idx" in arr else None,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"3DMM model file {path}: {e}") from e

    # --- geometry

    def reconstruct(self, coeffs: Coefficients) -> np.ndarray:
        """Mesh in the canonical frame, (V, 3)."""
        return (
            self.mean
            + np.tensordot(np.asarray(coeffs.shape, np.float64), self.id_basis, axes=1)
            + np.tensordot(np.asarray(coeffs.expression, np.float64), self.exp_basis, axes=1)
        )

    def _posed(self, coeffs: Coefficients, x: np.ndarray) -> np.ndarray:
        s, tx, ty = (float(v) for v in coeffs.camera)
        r = rotation_from_pose(coeffs.pose)
        return s * (x @ r.T)[:, :2] + np.array([tx, ty])  # (V, 2)

    def project(self, coeffs: Coefficients) -> np.ndarray:
        """Orthographic projection s * (R X)_xy + t in crop pixels, (V, 2)."""
        return self._posed(coeffs, self.reconstruct(coeffs))

    def contour2d(self, coeffs: Coefficients) -> np.ndarray:
        """Projected jaw/cheek contour landmarks, (K, 2)."""
        return self.project(coeffs)[self.contour_idx]

    def build_p12(self, c1: Coefficients, c2: Coefficients) -> np.ndarray:
        """FlowFace++ Eq. 16: identity of face 1, expression + pose + camera of face 2; (K, 2)."""
        return self.contour2d(c2.replace(shape=np.asarray(c1.shape)))

    # --- fitting

    def fit(self, points: np.ndarray, iters: int = 5, reg: float = 1e-3) -> Coefficients:
        """Fit to landmarker points (468, 3) in crop pixels (z scaled like x).

        Alternates a proper similarity fit (Umeyama, tz is a nuisance) and ridge least squares on
        [beta, psi] in the canonical frame. `reg` = landmark noise variance in model units (mean
        shape RMS radius 1) against the unit-variance coefficient prior.
        """
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"fit: points must be (N, 3), got {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("fit: non-finite points")
        if self.landmark_idx is not None:
            pts = pts[self.landmark_idx]
        if pts.shape[0] != self.n_vertices:
            raise ValueError(f"fit: {pts.shape[0]} points for a {self.n_vertices}-vertex model")
        a = np.concatenate([self.id_basis, self.exp_basis], 0).reshape(self.n_shape + self.n_exp, 3 * self.n_vertices).T  # (3V, n)
        lhs = a.T @ a + reg * np.eye(a.shape[1])
        coef = np.zeros(a.shape[1])
        x = self.mean
        s, r, t = 1.0, np.eye(3), np.zeros(3)
        for _ in range(max(1, iters)):
            s, r, t = similarity_fit(x, pts)
            obs = (pts - t) @ r / s  # (V, 3) observation in the canonical frame
            coef = np.linalg.solve(lhs, a.T @ (obs - self.mean).ravel())
            x = self.mean + (a @ coef).reshape(-1, 3)
        s, r, t = similarity_fit(x, pts)
        resid = pts - (s * x @ r.T + t)
        return Coefficients(
            shape=coef[: self.n_shape].copy(),
            expression=coef[self.n_shape :].copy(),
            pose=pose_from_rotation(r),
            camera=np.array([s, t[0], t[1]]),
            rmse=float(np.sqrt((resid**2).sum(1).mean())),
        )


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "fiu":
        raise ValueError(f"expected a numeric array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _as_int(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "iu":
        raise ValueError(f"expected an integer index array, got dtype {a.dtype}")
    return a.astype(np.int64)


def _validate(m: LinearFaceModel, where: str) -> None:
    if m.mean.ndim != 2 or m.mean.shape[1] != 3 or m.mean.shape[0] < 3:
        raise ValueError(f"{where}: mean must be (V, 3), got {m.mean.shape}")
    v = m.mean.shape[0]
    for name in ("id_basis", "exp_basis"):
        b = getattr(m, name)
        if b.ndim != 3 or b.shape[1:] != (v, 3):
            raise ValueError(f"{where}: {name} must be (n, {v}, 3), got {b.shape}")
    for name in ("mean", "id_basis", "exp_basis"):
        if not np.isfinite(getattr(m, name)).all():
            raise ValueError(f"{where}: {name} has non-finite values")
    c = m.contour_idx
    if c.ndim != 1 or len(c) < 2 or c.min() < 0 or c.max() >= v:
        raise ValueError(f"{where}: contour_idx must be (K>=2,) indices into {v} vertices")
    if m.landmark_idx is not None:
        li = m.landmark_idx
        if li.shape != (v,) or li.min() < 0:
            raise ValueError(f"{where}: landmark_idx must be ({v},) non-negative indices")


# Module-level API: works with any FaceModel backend.


def fit(model: FaceModel, points: np.ndarray, iters: int = 5, reg: float = 1e-3) -> Coefficients:
    return model.fit(points, iters=iters, reg=reg)


def reconstruct(model: FaceModel, coeffs: Coefficients) -> np.ndarray:
    return model.reconstruct(coeffs)


def project(model: FaceModel, coeffs: Coefficients) -> np.ndarray:
    return model.project(coeffs)


def contour2d(model: FaceModel, coeffs: Coefficients) -> np.ndarray:
    return model.contour2d(coeffs)


def build_p12(model: FaceModel, c1: Coefficients, c2: Coefficients) -> np.ndarray:
    return model.build_p12(c1, c2)


def load_model(path: str | os.PathLike) -> LinearFaceModel:
    return LinearFaceModel.load(path)


# ----------------------------------------------------------------------------- contour


def face_oval_loop() -> np.ndarray:
    """mediapipe's FACEMESH_FACE_OVAL edges chained into one closed loop of vertex ids, (36,)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    with _quiet_stderr():  # importing mediapipe prints a protobuf AttributeError line
        from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    nbrs: dict[int, list[int]] = {}
    for a, b in FACEMESH_FACE_OVAL:
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    if any(len(n) != 2 for n in nbrs.values()):
        raise RuntimeError("FACEMESH_FACE_OVAL is not a simple loop")
    start = min(nbrs)
    loop, prev = [start], None
    cur = start
    while True:
        nxt = [n for n in nbrs[cur] if n != prev][0] if prev is not None else nbrs[cur][0]
        if nxt == start:
            break
        loop.append(nxt)
        prev, cur = cur, nxt
    if len(loop) != len(nbrs):
        raise RuntimeError("FACEMESH_FACE_OVAL has more than one loop")
    return np.array(loop, dtype=np.int64)


def lower_contour_idx(mean: np.ndarray) -> np.ndarray:
    """Face-oval vertices below eye level in the canonical mean (jaw + cheeks), image-left to right."""
    loop = face_oval_loop()
    eye_y = float(mean[list(_EYE_IDX), 1].mean())
    below = mean[loop, 1] > eye_y
    if below.all() or not below.any():
        raise ValueError("lower_contour_idx: mean shape is not an upright face")
    # rotate the loop so the lower run is contiguous: start just after an upper vertex
    k = int(np.flatnonzero(~below & np.roll(below, -1))[0])  # upper vertex followed by a lower one
    loop, below = np.roll(loop, -(k + 1)), np.roll(below, -(k + 1))
    arc = loop[: int(np.argmin(below))]
    if mean[arc[0], 0] > mean[arc[-1], 0]:
        arc = arc[::-1]
    return arc.copy()


# ----------------------------------------------------------------------------- learning


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    return x / np.sqrt((x**2).sum(1).mean())


def _batch_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised `similarity_fit` of every src (N, V, 3) onto one dst (V, 3): s (N,), R (N,3,3), t (N,3)."""
    mu_s, mu_d = src.mean(1), dst.mean(0)  # (N, 3), (3,)
    xs, xd = src - mu_s[:, None], dst - mu_d
    cov = np.einsum("vi,nvj->nij", xd, xs) / src.shape[1]  # (N, 3, 3)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((len(src), 3))
    d[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    d[d[:, 2] == 0, 2] = 1.0
    r = u @ (d[:, :, None] * vt)
    var_s = (xs**2).sum((1, 2)) / src.shape[1]
    s = np.where(var_s > 0, (sig * d).sum(1) / np.where(var_s > 0, var_s, 1.0), 1.0)
    t = mu_d - s[:, None] * np.einsum("nij,nj->ni", r, mu_s)
    return s, r, t


def _apply(s: np.ndarray, r: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """s R x + t for batches: x (N, V, 3) -> (N, V, 3)."""
    return s[:, None, None] * np.einsum("nvj,nij->nvi", x, r) + t[:, None]


def _generalised_procrustes(meshes: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Align every mesh to the evolving mean by a similarity. -> aligned (N, V, 3), mean (V, 3)."""
    ref = _normalise(meshes[0])
    for _ in range(max(1, iters)):
        aligned = _apply(*_batch_similarity(meshes, ref), meshes)
        new = _normalise(aligned.mean(0))
        s, r, t = similarity_fit(new, ref)  # keep the reference frame from drifting
        new = s * new @ r.T + t
        done = np.sqrt(((new - ref) ** 2).sum(1).mean()) < 1e-7
        ref = new
        if done:
            break
    return _apply(*_batch_similarity(meshes, ref), meshes), ref


def canonical_rotation(mean: np.ndarray, meshes: np.ndarray | None = None) -> np.ndarray:
    """Rotation Q (3, 3) taking a mediapipe-topology mean into the canonical frame (x_c = Q x).

    x axis: average image-left -> image-right direction of bilateral landmark pairs (so yaw and
    roll are zero at facial symmetry); y axis: down the face, orthogonal to x; z = x cross y.
    Pitch zero: the median pitch of `meshes` (the training crops) when given, else the
    forehead(10)-chin(152) line parallel to the image plane.
    """
    ex = np.mean([mean[b] - mean[a] for a, b in _SYM_PAIRS], 0)
    ex /= np.linalg.norm(ex)
    down = mean[152] - mean[10]
    ey = down - ex * (down @ ex)
    ey /= np.linalg.norm(ey)
    q = np.stack([ex, ey, np.cross(ex, ey)])  # rows: canonical axes
    if meshes is not None and len(meshes):
        canon = (mean - mean.mean(0)) @ q.T
        r = _batch_similarity(meshes, canon)[1].transpose(0, 2, 1)  # canon -> each mesh
        pitches = -np.degrees(np.arctan2(r[:, 2, 1], r[:, 2, 2]))  # as in pose_from_rotation
        q = _rx(-math.radians(float(np.median(pitches)))) @ q
    return q


def _similarity_tangent(mean: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3V, 7) of infinitesimal translations, rotations and scaling of `mean`."""
    v = len(mean)
    x = mean - mean.mean(0)
    cols = [np.tile(e, v) for e in np.eye(3)]  # translations
    cols += [np.cross(w, x).ravel() for w in np.eye(3)]  # rotations about x, y, z
    cols.append(x.ravel())  # scale
    return np.linalg.qr(np.stack(cols, 1))[0]


def _project_out(d: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Remove the span of orthonormal columns u (3V, k) from rows of d (M, 3V)."""
    return d - (d @ u) @ u.T


def _pca(d: np.ndarray, dof: int, n: int, what: str) -> np.ndarray:
    """Rows of `d` (M, 3V) -> basis (n, 3V) scaled by component std; clamps n to the data rank."""
    if dof < 1 or len(d) == 0:
        if n > 0:
            log.warning("learn_model: %s basis: no data supports it; %d -> 0 components", what, n)
        return np.zeros((0, d.shape[1]))
    m = min(n, dof, *d.shape)
    if m < 1:
        return np.zeros((0, d.shape[1]))
    # top-m eigenpairs of the smaller Gram matrix (fast for many meshes: 3V x 3V at most)
    wide = d.shape[0] <= d.shape[1]
    g = d @ d.T if wide else d.T @ d
    w, vec = scipy.linalg.eigh(g, subset_by_index=[len(g) - m, len(g) - 1])
    w, vec = w[::-1], vec[:, ::-1]
    sv = np.sqrt(np.clip(w, 0, None))  # singular values of d, descending
    rank = int((sv > sv[0] * 1e-5).sum()) if sv[0] > 0 else 0
    k = min(m, rank)
    vt = (vec[:, :k].T @ d) / sv[:k, None] if wide else vec[:, :k].T  # (k, 3V) unit rows
    if k < n:
        log.warning("learn_model: %s basis clamped %d -> %d components (data supports %d)", what, n, k, k)
    std = sv[:k] / math.sqrt(dof)
    return vt[:k] * std[:, None]


def mesh_name(row: dict) -> str:
    """File name of a crop's stored face mesh (the threedmm stage's meshes/): named after the aligned crop
    (`row["crop"]`), whose name fingerprints the alignment settings."""
    return f"{Path(row['crop']).with_suffix('').as_posix()}.npy"


def learn_model(
    meshes: np.ndarray,
    identities: Sequence[str],
    n_shape: int,
    n_exp: int,
    procrustes_iters: int = 5,
    contour_idx: np.ndarray | None = None,
) -> LinearFaceModel:
    """Learn a linear 3DMM from dense landmark meshes (N, V, 3) in crop pixels, one label each.

    Rigid pose + scale removed by generalised Procrustes; expression basis = PCA of within-identity
    residuals; identity basis = PCA of per-identity mean shapes (minus the mean over identities) with
    the expression subspace projected out. Basis vectors carry their std, so
    coefficients have unit variance on the training data. Needs mediapipe topology (V=468) for
    the canonical frame and the default contour.
    """
    meshes = np.asarray(meshes, np.float64)
    ids = np.asarray([str(i) for i in identities])
    if meshes.ndim != 3 or meshes.shape[2] != 3:
        raise ValueError(f"learn_model: meshes must be (N, V, 3), got {meshes.shape}")
    if len(ids) != len(meshes):
        raise ValueError("learn_model: one identity label per mesh")
    if meshes.shape[1] != N_MESH:
        raise ValueError(f"learn_model: expects mediapipe topology ({N_MESH} vertices), got {meshes.shape[1]}")
    if not np.isfinite(meshes).all():
        raise ValueError("learn_model: non-finite mesh coordinates")
    n, v, _ = meshes.shape

    aligned, ref = _generalised_procrustes(meshes, procrustes_iters)
    q = canonical_rotation(ref, meshes)
    aligned = (aligned - ref.mean(0)) @ q.T  # (N, V, 3) canonical frame, RMS radius ~1

    labels, inv = np.unique(ids, return_inverse=True)
    id_means = np.stack([aligned[inv == k].mean(0) for k in range(len(labels))])  # (I, V, 3)
    mean = id_means.mean(0)  # (V, 3) every identity weighs the same
    # residual rigid motion/scale is pose, not shape: keep both bases orthogonal to it, which
    # also decouples the pose and coefficient steps of `fit`
    rigid = _similarity_tangent(mean)  # (3V, 7)
    # expression first: within-identity residuals are expression (+ landmark noise) only, while a person's
    # mean over a few faces still carries the mean of their expressions; so the identity basis is learned
    # with the expression subspace projected out, and a face's beta does not move with its expression
    resid = _project_out((aligned - id_means[inv]).reshape(n, -1), rigid)  # (N, 3V)
    exp_b = _pca(resid, n - len(labels), n_exp, "expression")  # (n_exp, 3V)
    d_id = _project_out((id_means - mean).reshape(len(labels), -1), rigid)
    if len(exp_b):
        d_id = _project_out(d_id, np.linalg.qr(exp_b.T)[0])  # expression subspace out
    id_b = _pca(d_id, len(labels) - 1, n_shape, "identity")  # (n_shape, 3V)

    if contour_idx is None:
        contour_idx = lower_contour_idx(mean)
    return LinearFaceModel(
        mean=mean,
        id_basis=id_b.reshape(-1, v, 3),
        exp_basis=exp_b.reshape(-1, v, 3),
        contour_idx=np.asarray(contour_idx, np.int64),
    )


# ----------------------------------------------------------------------------- landmarker


@contextlib.contextmanager
def _quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """Redirect fd 2 to /dev/null (mediapipe's C++ glog/absl/TFLite spam bypasses Python)."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MeshLandmarker:
    """mediapipe FaceMesh (468 3D points) on a face crop. Lazy: the graph is built on first use
    in the calling process and dropped on pickling, so each worker process builds its own."""

    def __init__(self, min_detection_confidence: float = 0.5, quiet: bool = True) -> None:
        self.min_detection_confidence = float(min_detection_confidence)
        self.quiet = quiet
        self._mesh: Any = None

    def _build(self) -> Any:
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _quiet_stderr(self.quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # protobuf label() in solution_base
            from absl import logging as absl_logging  # mediapipe dependency

            absl_logging.set_verbosity(absl_logging.ERROR)
            from mediapipe.python.solutions import face_mesh

            return face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=self.min_detection_confidence,
            )

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """crop (H, W, 3) uint8 RGB -> (468, 3) float32 in crop pixels (x*W, y*H, z*W) or None."""
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"MeshLandmarker: expected (H, W, 3) uint8 RGB, got {crop.shape} {crop.dtype}")
        if self._mesh is None:
            self._mesh = self._build()
        h, w = crop.shape[:2]
        with _quiet_stderr(self.quiet):
            res = self._mesh.process(np.ascontiguousarray(crop))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm], dtype=np.float32)  # (468, 3)
        return pts[:N_MESH]

    def close(self) -> None:
        if self._mesh is not None:
            with _quiet_stderr(self.quiet):
                self._mesh.close()
            self._mesh = None

    def __enter__(self) -> "MeshLandmarker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mesh": None}

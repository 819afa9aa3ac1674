"""Offline learned 3DMM (faceswap.faces.threedmm): learning from real mediapipe meshes, refitting
known coefficients, pose conventions on real (mirrored) images, FlowFace++ P12, persistence."""
from __future__ import annotations

import logging
import pickle

import cv2
import numpy as np
import pytest

pytest.importorskip("mediapipe")
from skimage import data  # noqa: E402
from skimage.transform import PiecewiseAffineTransform, warp  # noqa: E402

from faceswap.faces import threedmm as T  # noqa: E402

S = 256
N_ID, N_IMG = 6, 5


def _face_crop() -> np.ndarray:
    """The astronaut's face, roughly centred, (S, S, 3) uint8 RGB."""
    return cv2.resize(data.astronaut()[35:215, 135:315], (S, S), interpolation=cv2.INTER_AREA)


def _warp(im: np.ndarray, m0: np.ndarray, rng: np.random.Generator, ident: tuple[float, float, float]) -> np.ndarray:
    """Identity = anisotropic stretch + jaw widening; expression = local mouth/brow/smile warps;
    plus a random in-plane similarity (pose noise for Procrustes). Approximate inverse maps."""
    c = m0[:, :2].mean(0)
    mouth = m0[[13, 14], :2].mean(0)
    brow = m0[[70, 300, 105, 334], :2].mean(0)
    sx, sy, jaw = ident
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    a, sc = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.9, 1.1)
    x, y = xx - c[0], yy - c[1]
    xr, yr = (np.cos(a) * x + np.sin(a) * y) / sc, (-np.sin(a) * x + np.cos(a) * y) / sc
    lower = np.clip((yr + c[1] - mouth[1]) / 60.0, 0, None)
    X, Y = xr / (sx * (1 + jaw * lower)) + c[0], yr / sy + c[1]
    g_m = np.exp(-((X - mouth[0]) ** 2 / (2 * 22**2) + (Y - mouth[1] - 12) ** 2 / (2 * 14**2)))
    g_b = np.exp(-((Y - brow[1]) ** 2) / (2 * 10**2) - (X - c[0]) ** 2 / (2 * 60**2))
    g_s = np.exp(-((np.abs(X - mouth[0]) - 26) ** 2 / (2 * 10**2) + (Y - mouth[1]) ** 2 / (2 * 10**2)))
    mouth_open, brow_up, smile = rng.uniform(0, 10), rng.uniform(0, 6), rng.uniform(-5, 5)
    Y = Y - mouth_open * g_m + brow_up * g_b + 0.5 * smile * g_s
    X = X - smile * np.sign(X - mouth[0]) * g_s
    return cv2.remap(im, X.astype(np.float32), Y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _yawed(im: np.ndarray, mesh: np.ndarray, yaw: float) -> np.ndarray:
    """Re-render the face turned by `yaw` degrees: rotate its 3D mesh, piecewise-affine warp."""
    c = mesh.mean(0)
    dst = (mesh - c) @ T.rotation_from_pose((yaw, 0.0, 0.0)).T + c
    e = S - 1
    border = np.array([[0, 0], [e, 0], [0, e], [e, e], [e / 2, 0], [e / 2, e], [0, e / 2], [e, e / 2]])
    tf = PiecewiseAffineTransform.from_estimate(np.vstack([dst[:, :2], border]), np.vstack([mesh[:, :2], border]))
    assert tf
    return np.clip(warp(im, tf, output_shape=im.shape[:2], preserve_range=True), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def landmarker():
    lm = T.MeshLandmarker()
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return _face_crop()


@pytest.fixture(scope="module")
def real_meshes(landmarker, crop):
    """(N, 468, 3) mediapipe meshes of warped astronaut crops and their identity labels."""
    rng = np.random.default_rng(0)
    m0 = landmarker(crop)
    assert m0 is not None and m0.shape == (468, 3) and m0.dtype == np.float32
    meshes, ids = [], []
    for i in range(N_ID):
        ident = (rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), rng.uniform(-0.25, 0.25))
        for _ in range(N_IMG):
            m = landmarker(_warp(crop, m0, rng, ident))
            assert m is not None
            meshes.append(m)
            ids.append(f"id{i}")
    return np.stack(meshes), ids


@pytest.fixture(scope="module")
def model(real_meshes) -> T.LinearFaceModel:
    meshes, ids = real_meshes
    return T.learn_model(meshes, ids, n_shape=20, n_exp=10)


def _random_coeffs(model: T.LinearFaceModel, rng: np.random.Generator) -> T.Coefficients:
    return T.Coefficients(
        shape=rng.normal(size=model.n_shape),
        expression=rng.normal(size=model.n_exp),
        pose=np.array([rng.uniform(-30, 30), rng.uniform(-15, 15), rng.uniform(-10, 10)]),
        camera=np.array([rng.uniform(50, 70), 128 + 5 * rng.normal(), 128 + 5 * rng.normal()]),
    )


def _render3d(model: T.LinearFaceModel, c: T.Coefficients) -> np.ndarray:
    """Landmarker-like (V, 3) points: s R X + (tx, ty, tz)."""
    x = model.reconstruct(c)
    return c.camera[0] * x @ T.rotation_from_pose(c.pose).T + np.array([c.camera[1], c.camera[2], 3.0])


# ----------------------------------------------------------------------------- learning


def test_learn_model_structure_and_clamping(real_meshes, caplog):
    meshes, ids = real_meshes
    with caplog.at_level(logging.WARNING, logger="faceswap.faces.threedmm"):
        m = T.learn_model(meshes, ids, n_shape=20, n_exp=10)
    assert m.n_shape == N_ID - 1 and "clamped 20 -> 5" in caplog.text  # identities - 1
    assert m.n_exp == 10 and m.mean.shape == (468, 3)
    assert isinstance(m, T.FaceModel)
    # canonical frame: centred, RMS radius 1, x to image right, y down, nose toward the camera
    assert np.allclose(m.mean.mean(0), 0, atol=1e-9)
    assert np.sqrt((m.mean**2).sum(1).mean()) == pytest.approx(1.0, abs=1e-2)
    assert m.mean[263, 0] > m.mean[33, 0] and m.mean[152, 1] > m.mean[10, 1] and m.mean[1, 2] < m.mean[234, 2]
    # bases: identity and expression mutually orthogonal and free of rigid motion
    a = np.concatenate([m.id_basis, m.exp_basis]).reshape(m.n_shape + m.n_exp, -1)
    g = a @ a.T
    assert np.abs(g - np.diag(np.diag(g))).max() < 1e-9 * np.abs(g).max()
    rigid = T._similarity_tangent(m.mean)
    assert np.abs(a @ rigid).max() < 1e-9
    # contour: lower face-oval chain (jaw + cheeks), ordered image-left -> right through the chin
    oval = {frozenset(e) for e in __import__("mediapipe").solutions.face_mesh.FACEMESH_FACE_OVAL}
    ci = m.contour_idx
    assert 152 in ci and all(frozenset((int(a_), int(b_))) in oval for a_, b_ in zip(ci[:-1], ci[1:]))
    assert (m.mean[ci, 1] > m.mean[list(T._EYE_IDX), 1].mean()).all()
    assert m.mean[ci[0], 0] < 0 < m.mean[ci[-1], 0] and 17 <= len(ci) <= 25


def test_coefficients_have_unit_variance_on_training_data(model, real_meshes):
    meshes, ids = real_meshes
    fits = [T.fit(model, p, reg=1e-8) for p in meshes]
    beta = np.stack([f.shape for f in fits])
    ids = np.array(ids)
    per_id = np.stack([beta[ids == k].mean(0) for k in np.unique(ids)])  # (I, n_shape)
    assert per_id.std(0, ddof=1) == pytest.approx(np.ones(model.n_shape), abs=0.05)
    assert max(f.rmse for f in fits) < 2.0  # crop pixels, 3D residual


# ----------------------------------------------------------------------------- fitting


def test_refit_recovers_known_coefficients(model):
    rng = np.random.default_rng(1)
    for _ in range(10):  # noise-free: exact
        c = _random_coeffs(model, rng)
        f = T.fit(model, _render3d(model, c), reg=1e-10)
        assert np.abs(np.r_[f.shape - c.shape, f.expression - c.expression]).max() < 1e-4
        assert np.abs(f.pose - c.pose).max() < 1e-4 and np.abs(f.camera - c.camera).max() < 1e-4
        assert f.rmse < 1e-6
    pose_err, id0_err, geo_err, z = [], [], [], []
    sigma = 0.5  # crop pixels per coordinate
    for _ in range(30):
        c = _random_coeffs(model, rng)
        f = T.fit(model, _render3d(model, c) + rng.normal(scale=sigma, size=(468, 3)), reg=(sigma / 60) ** 2)
        pose_err.append(np.abs(f.pose - c.pose))
        id0_err.append(abs(f.shape[0] - c.shape[0]))
        geo_err.append(np.sqrt(((model.reconstruct(f) - model.reconstruct(c)) ** 2).sum(1).mean()) * c.camera[0])
        # coefficient error relative to its expected std sigma / (s * ||b_k||) (orthogonal bases)
        nb = np.sqrt((np.concatenate([model.id_basis, model.exp_basis]) ** 2).sum((1, 2)))
        z.append((np.r_[f.shape - c.shape, f.expression - c.expression]) * c.camera[0] * nb / sigma)
    assert np.max(pose_err) < 0.5, np.max(pose_err, 0)  # degrees
    # beta_0 in its own units: since the expression basis is learned first (issue 32) the identity basis has the
    # expression span (the chin moves with the mouth) projected out, so beta_0 is smaller in pixels and the same
    # landmark noise a larger share of it (0.033 measured, 0.02 before); the z check below is the noise bound
    assert np.mean(id0_err) < 0.045
    assert np.mean(geo_err) < 0.3  # crop pixels
    assert np.sqrt(np.mean(np.square(z))) < 1.5  # ~1 = noise-limited


def test_fit_with_vertex_subset_model(model):
    """A user model that covers only some landmarks (landmark_idx) fits the full 468 points."""
    idx = np.arange(0, 468, 3)
    remap = {int(v): k for k, v in enumerate(idx)}
    sub = T.LinearFaceModel(
        mean=model.mean[idx], id_basis=model.id_basis[:, idx], exp_basis=model.exp_basis[:, idx],
        contour_idx=np.array([remap[int(v)] for v in model.contour_idx if int(v) in remap]), landmark_idx=idx,
    )
    c = _random_coeffs(model, np.random.default_rng(2))
    f = sub.fit(_render3d(model, c), reg=1e-10)
    assert np.abs(f.pose - c.pose).max() < 1e-3 and np.abs(f.shape - c.shape).max() < 1e-3


def test_fit_rejects_bad_points(model):
    with pytest.raises(ValueError):
        T.fit(model, np.zeros((468, 2)))
    with pytest.raises(ValueError):
        T.fit(model, np.zeros((100, 3)))
    with pytest.raises(ValueError):
        T.fit(model, np.full((468, 3), np.nan))


def test_pose_convention():
    rng = np.random.default_rng(3)
    flip = np.diag([-1.0, 1.0, 1.0])
    for _ in range(20):
        p = np.array([rng.uniform(-80, 80), rng.uniform(-60, 60), rng.uniform(-90, 90)])
        r = T.rotation_from_pose(p)
        assert np.allclose(T.pose_from_rotation(r), p)
        assert np.allclose(flip @ r @ flip, T.rotation_from_pose(p * [-1, 1, -1]))  # mirror
    nose = np.array([0.0, 0.0, -1.0])  # in front of the face (toward the camera)
    assert (T.rotation_from_pose((20, 0, 0)) @ nose)[0] > 0  # yaw > 0: nose to image right
    assert (T.rotation_from_pose((0, 20, 0)) @ nose)[1] < 0  # pitch > 0: nose up (y is down)
    right = T.rotation_from_pose((0, 0, 20)) @ np.array([1.0, 0.0, 0.0])
    assert right[1] > 0  # roll > 0: clockwise as displayed


def test_mirrored_image_flips_yaw(model, landmarker, crop):
    """Real mediapipe meshes: the astronaut re-rendered at +20 deg yaw, and its mirror image."""
    frontal = T.fit(model, landmarker(crop))
    assert abs(frontal.pose[0]) < 5  # the photo is nearly frontal
    turned = _yawed(crop, landmarker(crop).astype(np.float64), 20.0)
    a = T.fit(model, landmarker(turned))
    b = T.fit(model, landmarker(np.ascontiguousarray(turned[:, ::-1])))
    assert a.pose[0] > 10 and b.pose[0] < -10  # nose to image right -> positive yaw
    assert abs(a.pose[0] + b.pose[0]) < 0.15 * abs(a.pose[0])
    assert abs(a.pose[1] - b.pose[1]) < 3  # pitch unchanged
    assert abs(a.pose[2] + b.pose[2]) < 3  # roll flips
    w = turned.shape[1]
    assert abs(a.camera[1] - (w - b.camera[1])) < 3  # tx mirrors


# ----------------------------------------------------------------------------- P12


def test_build_p12(model):
    rng = np.random.default_rng(4)
    c1, c2 = _random_coeffs(model, rng), _random_coeffs(model, rng)
    assert np.allclose(T.build_p12(model, c2, c2), T.contour2d(model, c2))
    p12 = T.build_p12(model, c1, c2)
    assert p12.shape == (len(model.contour_idx), 2)
    # identity of face 1 reshapes it: 0.18 px measured for a N(0, 1) identity draw (over 0.5 before issue 32,
    # when the identity basis still held the jaw's share of the mouth's motion, now in the expression basis)
    assert np.abs(p12 - T.contour2d(model, c2)).max() > 0.1
    # only c1's identity matters: its expression, pose and camera do not
    c1b = c1.replace(expression=-c1.expression, pose=c1.pose + 17, camera=c1.camera * 2)
    assert np.allclose(T.build_p12(model, c1b, c2), p12)
    # equal to the contour of face 2's parameters with face 1's shape, fitted pose stays c2's
    mixed = c2.replace(shape=c1.shape)
    assert np.allclose(p12, T.project(model, mixed)[model.contour_idx])
    f = T.fit(model, _render3d(model, mixed), reg=1e-10)
    assert np.allclose(f.pose, c2.pose, atol=1e-4) and np.allclose(f.camera, c2.camera, atol=1e-4)


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(model, tmp_path):
    p = tmp_path / "sub" / "model.npz"
    model.save(p)
    assert [q.name for q in p.parent.iterdir()] == ["model.npz"]  # no temp files left
    m2 = T.LinearFaceModel.load(p)
    for k in ("mean", "id_basis", "exp_basis"):
        assert np.allclose(getattr(m2, k), getattr(model, k), atol=1e-6)
    assert np.array_equal(m2.contour_idx, model.contour_idx) and m2.landmark_idx is None
    c = _random_coeffs(model, np.random.default_rng(5))
    assert np.allclose(T.contour2d(m2, c), T.contour2d(model, c), atol=1e-3)


def test_load_rejects_bad_files(model, tmp_path):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="corrupt.npz"):
        T.LinearFaceModel.load(bad)
    wrong = tmp_path / "wrong_shape.npz"
    np.savez(wrong, mean=model.mean, id_basis=model.id_basis[:, :10], exp_basis=model.exp_basis, contour_idx=model.contour_idx)
    with pytest.raises(ValueError, match="wrong_shape.npz.*id_basis"):
        T.LinearFaceModel.load(wrong)
    missing = tmp_path / "missing.npz"
    np.savez(missing, mean=model.mean)
    with pytest.raises(ValueError, match="missing.npz.*missing arrays"):
        T.LinearFaceModel.load(missing)
    single = tmp_path / "single.npy"
    np.save(single, model.mean)
    with pytest.raises(ValueError, match="single.npy"):
        T.LinearFaceModel.load(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mean=np.array([object()]), id_basis=model.id_basis, exp_basis=model.exp_basis, contour_idx=model.contour_idx)
    with pytest.raises(ValueError, match="pickled.npz"):
        T.LinearFaceModel.load(pickled)
    outside = tmp_path / "bad_contour.npz"
    np.savez(outside, mean=model.mean, id_basis=model.id_basis, exp_basis=model.exp_basis, contour_idx=np.array([0, 999]))
    with pytest.raises(ValueError, match="bad_contour.npz.*contour_idx"):
        T.LinearFaceModel.load(outside)


# ----------------------------------------------------------------------------- landmarker


def test_landmarker_contract(landmarker):
    assert landmarker(np.full((S, S, 3), 127, np.uint8)) is None  # no face
    with pytest.raises(ValueError):
        landmarker(np.zeros((S, S, 3), np.float32))
    clone = pickle.loads(pickle.dumps(landmarker))  # graph is not pickled; rebuilt lazily
    assert clone._mesh is None
    clone.close()


# ----------------------------------------------------------------------------- identity-grouped CV (threedmm_cv)


def _synthetic_meshes(m0: np.ndarray, rng: np.random.Generator, n_id: int = 8, n_img: int = 6,
                      id_scale: float = 1.0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Meshes = the astronaut's mesh + identity offsets (x/y stretch, jaw widening, random smooth field)
    + known expressions (inner lips 13/14 apart = mouth opening, brows 105/334 up) + a random 3D similarity.
    -> (N, 468, 3), identities, true mouth opening (N,) in px."""
    c = m0.mean(0)
    x = m0 - c
    mouth_y = m0[[13, 14], 1].mean() - c[1]
    lower = np.clip((x[:, 1] - mouth_y) / 60.0, 0, None)
    open_dir = np.zeros_like(m0)
    open_dir[13, 1], open_dir[14, 1] = -0.5, 0.5  # per px of opening
    brow_dir = np.zeros_like(m0)
    brow_dir[[105, 334], 1] = -1.0
    meshes, ids, opening = [], [], []
    for i in range(n_id):
        sx, sy = 1 + id_scale * rng.uniform(-0.15, 0.15, 2)
        jaw = id_scale * rng.uniform(-0.25, 0.25)
        field = id_scale * 2.0 * np.sin(x @ rng.normal(scale=0.03, size=(3, 3)) + rng.uniform(0, 6, 3))
        shape = np.column_stack([x[:, 0] * sx * (1 + jaw * lower), x[:, 1] * sy, x[:, 2]]) + field
        for _ in range(n_img):
            a, b = rng.uniform(0, 10), rng.uniform(0, 4)
            m = shape + a * open_dir + b * brow_dir + rng.normal(scale=0.05, size=m0.shape)
            r = T.rotation_from_pose((rng.uniform(-10, 10), rng.uniform(-8, 8), rng.uniform(-8, 8)))
            meshes.append(rng.uniform(0.9, 1.1) * m @ r.T + c + rng.normal(scale=3, size=3))
            ids.append(f"id{i}")
            opening.append(a)
    return np.stack(meshes), ids, np.array(opening)


@pytest.fixture(scope="module")
def synthetic(landmarker, crop):
    from faceswap.evaluation.features import EXPRESSION_MEASURES, mesh_expression

    meshes, ids, opening = _synthetic_meshes(landmarker(crop).astype(np.float64), np.random.default_rng(6))
    return meshes, ids, opening, np.stack([mesh_expression(m) for m in meshes]), EXPRESSION_MEASURES


def test_expression_cv_predicts_a_known_within_person_expression(synthetic):
    from faceswap.faces.threedmm_cv import expression_cv

    meshes, ids, _, measures, names = synthetic
    cv = expression_cv(meshes, ids, measures, names, n_shape=4, n_exp=3, folds=4)
    assert cv["skipped"] is None and cv["folds"] == 4 and cv["identities"] == 8 and cv["faces"] == len(ids)
    assert cv["r2"]["mouth_open"] > 0.9, cv["r2"]
    assert cv["r2"]["brow_left"] > 0.6 and cv["r2"]["brow_right"] > 0.6, cv["r2"]  # pitch blurs brow height
    again = expression_cv(meshes[::-1], ids[::-1], measures[::-1], names, n_shape=4, n_exp=3, folds=4)
    assert again["r2"] == pytest.approx(cv["r2"])  # deterministic, order-independent folds


def test_expression_cv_of_unrelated_measures_is_not_better_than_chance(synthetic):
    from faceswap.faces.threedmm_cv import expression_cv

    meshes, ids, _, measures, names = synthetic
    noise = np.random.default_rng(7).normal(size=measures.shape)  # within-person deviation unrelated to the mesh
    cv = expression_cv(meshes, ids, noise, names, n_shape=4, n_exp=3, folds=4)
    r2 = list(cv["r2"].values())
    assert cv["skipped"] is None and max(r2) < 0.15 and np.mean(r2) < 0.03, cv["r2"]  # ~ -P/N by chance


def test_expression_cv_skips_with_a_reason_when_identities_are_few(synthetic):
    from faceswap.faces.threedmm_cv import expression_cv

    meshes, ids, _, measures, names = synthetic
    few = np.isin(ids, ["id0", "id1", "id2"])
    cv = expression_cv(meshes[few], np.array(ids)[few], measures[few], names, n_shape=4, n_exp=3)
    assert cv["r2"] is None and "3 identities" in cv["skipped"] and cv["identities"] == 3


def test_shape_icc_is_high_when_identities_differ(landmarker, crop):
    from faceswap.faces.threedmm_cv import shape_icc

    meshes, ids, _ = _synthetic_meshes(landmarker(crop).astype(np.float64), np.random.default_rng(8), n_id=10,
                                       n_img=4, id_scale=2.0)
    model = T.learn_model(meshes, ids, n_shape=4, n_exp=3)
    beta = np.stack([model.fit(m).shape for m in meshes])
    icc = shape_icc(beta, ids)
    assert icc["pooled"] > 0.95 and icc["min"] > 0.8, icc
    shuffled = shape_icc(beta, np.random.default_rng(9).permutation(ids))
    assert shuffled["pooled"] < 0.3, shuffled

"""Metric sanity: each evaluation metric on constructed cases where the answer is known, and the
evaluate stage end to end on a tiny synthetic test split with tiny random swap generators."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from faceswap.faces.detectors import DlibDetector, align_face  # noqa: E402
from faceswap.core.images import encode_image  # noqa: E402
from faceswap.core.schemas import ALIGNED, EVAL_PAIRS, SPLITS, THREEDMM, read_table, write_table  # noqa: E402
from faceswap.faces import threedmm as T  # noqa: E402
from faceswap.evaluation import metrics as E  # noqa: E402
from faceswap.evaluation.features import FaceAttributes, InceptionFeatures  # noqa: E402
from paramsutil import section  # noqa: E402

CROP = 128
SCALE = 1.4
IDENTITIES = {"a": (1.0, 1.0, (0, 0, 0)), "b": (1.12, 0.92, (12, -4, -10)), "c": (0.9, 1.1, (-10, 6, 12))}
PER_ID = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _variant(base: np.ndarray, ident: tuple, rng: np.random.Generator, angle: float | None = None) -> np.ndarray:
    """Identity = anisotropic stretch + tint about the crop centre; per image: small rotation + shift."""
    sx, sy, tint = ident
    c = base.shape[0] / 2
    a = rng.uniform(-4, 4) if angle is None else angle
    m = cv2.getRotationMatrix2D((c, c), a, 1.0) @ np.array([[sx, 0, c * (1 - sx)], [0, sy, c * (1 - sy)], [0, 0, 1]])
    m[:, 2] += rng.uniform(-2, 2, 2) if angle is None else 0
    out = cv2.warpAffine(base, m, base.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return np.clip(out.astype(np.int16) + np.array(tint, np.int16), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def base_crop(face_rgb) -> np.ndarray:
    """The astronaut aligned exactly as stages/align.py does, (CROP, CROP, 3) uint8."""
    face = DlibDetector(section("detect")).detect(face_rgb)[0]
    return align_face(face_rgb, face.landmarks5, CROP, SCALE)[0]


@pytest.fixture(scope="module")
def synthetic(base_crop):
    """3 identities x 4 crops, their meshes and a 3DMM learned from them."""
    rng = np.random.default_rng(0)
    crops, ids = [], []
    for name, ident in IDENTITIES.items():
        for _ in range(PER_ID):
            crops.append(_variant(base_crop, ident, rng))
            ids.append(name)
    with T.MeshLandmarker() as landmarker:
        meshes = [landmarker(c) for c in crops]
    assert all(m is not None for m in meshes)
    model = T.learn_model(np.stack(meshes), ids, n_shape=2, n_exp=4)
    return crops, ids, meshes, model


# ----------------------------------------------------------------------------- pure metrics


def test_pairs_are_seeded_and_cross_identity():
    ids = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    src, tgt = E.make_pairs(ids, 50, seed=3)
    assert len(src) == len(tgt) == 50
    assert all(ids[s] != ids[t] for s, t in zip(src, tgt))
    again = E.make_pairs(ids, 50, seed=3)
    assert (again[0] == src).all() and (again[1] == tgt).all()
    assert not (E.make_pairs(ids, 50, seed=4)[1] == tgt).all()
    counts = np.bincount(src, minlength=len(ids))
    assert counts.max() - counts.min() <= 1  # sources cycle through every image
    with pytest.raises(ValueError, match="2 identities"):
        E.make_pairs(["a", "a"], 3, 0)


def test_retrieval_hand_built():
    gallery = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [0, 10]], float)
    labels = ["A", "A", "B", "B", "C"]
    query = np.array([[0, 0.4], [9, 0], [0, 9]], float)
    true = ["A", "A", "C"]
    exclude = np.array([0, -1, 4])  # third query's own image is C's only one: unscorable
    for fn in (E.retrieve_all_images, E.retrieve_centres):
        r = fn(query, true, gallery, labels, exclude=exclude)
        assert r.rank.tolist() == [0, 1, -1], fn.__name__
        assert r.top_k(1) == pytest.approx(1 / 3) and r.top_k(2) == pytest.approx(2 / 3)  # unscorable = wrong
        assert r.predicted[:2].tolist() == ["A", "B"]
        # two exclusions per query (source and target image): without images 0 and 1, A has none left
        r2 = fn(query, true, gallery, labels, exclude=np.array([[0, 1], [-1, -1], [2, 3]]))
        assert r2.rank.tolist() == [-1, 1, 0], fn.__name__
    # centres and nearest-image modes disagree: A's images are spread out, B's are tight
    g2 = np.array([[0, 0], [0, 10], [2, 5], [2, 5.2]], float)
    q2 = np.array([[1, 5]], float)
    assert E.retrieve_centres(q2, ["A"], g2, ["A", "A", "B", "B"]).rank.tolist() == [0]
    assert E.retrieve_all_images(q2, ["A"], g2, ["A", "A", "B", "B"]).rank.tolist() == [1]
    # leave-one-out centre: without image 1, A's centre is (0, 0), farther than B's
    assert E.retrieve_centres(q2, ["A"], g2, ["A", "A", "B", "B"], exclude=np.array([1])).rank.tolist() == [1]


def test_swap_equal_source_gives_full_id_top1_on_separated_identities():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 5
    labels = np.repeat(np.arange(6), 4).astype(str)
    gallery = centres[labels.astype(int)] + rng.normal(size=(24, 16)) * 0.3
    src, tgt = E.make_pairs(labels, 40, seed=0)
    for fn in (E.retrieve_centres, E.retrieve_all_images):
        both = np.stack([src, tgt], 1)  # the query's own source and target images left out
        assert fn(gallery[src], labels[src], gallery, labels, exclude=both).top_k(1) == 1.0  # swap == source
        assert fn(gallery[tgt], labels[src], gallery, labels, exclude=both).top_k(1) == 0.0  # swap == target
    # noise: random embeddings retrieve at about chance (1/6), far below a real swap
    noise = rng.normal(size=(400, 16)) * 5
    src, tgt = E.make_pairs(labels, 400, seed=1)
    top1 = E.retrieve_centres(noise, labels[src], gallery, labels, exclude=np.stack([src, tgt], 1)).top_k(1)
    assert abs(top1 - E.chance_top_k(6, 1)) < 0.08, top1


def test_top_k_rate_counts_misses_and_chance():
    assert E.top_k_rate(np.array([0, 0, -1, 3]), 1) == 0.5  # a miss (-1) is a failure
    assert E.top_k_rate(np.array([0, 0, -1, 3]), 5) == 0.75
    assert np.isnan(E.top_k_rate(np.array([], int), 1))
    assert E.chance_top_k(20, 1) == 0.05 and E.chance_top_k(20, 5) == 0.25 and E.chance_top_k(4, 5) == 1.0


def test_id_margin_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    paste, copy = E.id_margin(s, s, t), E.id_margin(t, s, t)
    assert np.allclose(paste, 1 - E.cosine(s, t)) and np.allclose(copy, -paste)  # paste source > 0 > copy target
    assert paste.mean() > 0.5 and copy.mean() < -0.5
    assert E.cosine(np.array([[1.0, 0]]), np.array([[0.0, 2]]))[0] == pytest.approx(0.0)
    x = rng.normal(1.0, 1.0, 400)
    lo, hi = E.bootstrap_ci(x, n_boot=2000, seed=0)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert E.bootstrap_ci(x, seed=0) == E.bootstrap_ci(x, seed=0)  # seeded
    assert all(np.isnan(E.bootstrap_ci(np.array([1.0]))))


def test_fid_self_zero_grows_with_noise_and_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    assert E.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    fids = [E.fid_from_features(x, x + rng.normal(size=x.shape) * s) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    # 1-D Gaussians: (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2
    assert E.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[1.0]])) == pytest.approx(4 + 4 + 1 - 4)
    # fewer samples than dimensions (singular covariances) stays finite and ~0 for identical sets
    small = rng.normal(size=(5, 32))
    assert E.fid_from_features(small, small) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(E.fid_from_features(small[:1], small))
    # the sample-space route (N < D) equals the covariance route
    a, b = rng.normal(size=(30, 50)), rng.normal(size=(20, 50)) * 1.5 + 0.2
    cov = E.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert E.fid_from_features(a, b) == pytest.approx(cov, rel=1e-6)


def test_jaw_shift_known_values():
    """Share of the jaw gap covered, only where the source is wider by more than the gap threshold."""
    out = np.array([1.0, 1.2, 1.1, 0.9, np.nan])
    src = np.array([1.2, 1.2, 1.2, 1.0, 1.2])
    tgt = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    shift = E.jaw_shift(out, src, tgt, min_gap=0.05)
    np.testing.assert_allclose(shift[:3], [0.0, 1.0, 0.5])
    assert np.isnan(shift[3]) and np.isnan(shift[4])  # no gap / output without a face
    assert np.isnan(E.jaw_shift(np.array([1.3]), np.array([1.04]), np.array([1.0]), 0.05)[0])
    narrow = E.jaw_shift(np.array([1.1, 0.9]), np.array([0.8, 0.8]), np.array([1.0, 1.0]), 0.05, wider=False)
    np.testing.assert_allclose(narrow, [-0.5, 0.5])  # wider than the target: away from the narrower source
    assert np.isnan(E.jaw_shift(out, src, tgt, 0.05, wider=False)).all()


def test_pose_and_coeff_errors():
    assert E.pose_error(np.array([[179.0, 0, 0]]), np.array([[-179.0, 0, 0]]))[0] == pytest.approx(2.0)
    assert E.pose_error(np.array([[3.0, 4.0, 0]]), np.zeros((1, 3)))[0] == pytest.approx(5.0)
    err = E.coeff_error(np.array([[1.0, 1.0], [np.nan, 0]]), np.zeros((2, 2)))
    assert err[0] == pytest.approx(np.sqrt(2)) and np.isnan(err[1])
    assert E.nan_mean(err) == pytest.approx(np.sqrt(2)) and E.nan_mean(np.array([np.nan])) is None


# ----------------------------------------------------------------------------- real faces through the landmarker


def test_swap_equal_source_or_target_gives_zero_3dmm_errors(synthetic):
    """The same crop fits to the same coefficients (errors exactly 0); a re-encoded copy stays far
    closer to its source than a different identity does."""
    crops, ids, meshes, model = synthetic
    attr = FaceAttributes(model)
    try:
        refs = [model.fit(m) for m in meshes]
        again = attr(crops[0])
        assert E.coeff_error(again.shape, refs[0].shape) == pytest.approx(0.0, abs=1e-9)  # swap == source
        assert E.coeff_error(again.expression, refs[0].expression) == pytest.approx(0.0, abs=1e-9)  # swap == target
        assert E.pose_error(again.pose[None], refs[0].pose[None])[0] == pytest.approx(0.0, abs=1e-9)
        jpeg = cv2.imdecode(np.frombuffer(encode_image(crops[0], "jpg", 90), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        near = E.coeff_error(attr(np.ascontiguousarray(jpeg)).shape, refs[0].shape)
        other = [E.coeff_error(refs[j].shape, refs[0].shape) for j in range(len(ids)) if ids[j] != ids[0]]
        assert near < 0.5 * np.median(other), (near, other)
    finally:
        attr.close()


def test_pose_error_grows_with_rotation(base_crop, synthetic):
    """In-plane rotations of a real face: pose error vs the upright crop grows monotonically and
    tracks the angle (it is mostly roll)."""
    model = synthetic[3]
    attr = FaceAttributes(model)
    try:
        rng = np.random.default_rng(0)
        angles = [0, 5, 10, 20, 30]
        poses = [attr(_variant(base_crop, (1.0, 1.0, (0, 0, 0)), rng, angle=a)).pose for a in angles]
    finally:
        attr.close()
    err = E.pose_error(np.array(poses), np.repeat(poses[0][None], len(angles), 0))
    assert err[0] == 0 and all(a < b for a, b in zip(err, err[1:])), err
    assert np.allclose(err, angles, atol=2 + 0.15 * np.array(angles)), err


def test_inception_features_load_local_weights(tmp_path, base_crop):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    feats = InceptionFeatures(path).embed([base_crop, base_crop[::-1].copy()])
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    from faceswap.core.weights import WeightsError

    with pytest.raises(WeightsError, match="bad.pth"):
        InceptionFeatures(bad)


# ----------------------------------------------------------------------------- the stage


def _write_inputs(root, synthetic):
    crops, ids, meshes, model = synthetic
    rows, fits = [], []
    for c, ident, mesh in zip(crops, ids, meshes):
        png = encode_image(c, "png")
        sha = hashlib.sha256(png).hexdigest()
        rel = f"{sha[:2]}/{sha}.png"
        (root / "aligned" / sha[:2]).mkdir(parents=True, exist_ok=True)
        (root / "aligned" / rel).write_bytes(png)
        rows.append({"sha256": sha, "identity": ident, "path": f"raw/{sha}.png", "crop": rel, "size": CROP, "template_scale": 1.4,
                     "matrix": [1, 0, 0, 0, 1, 0], "landmarks5": [0.0] * 10, "landmarks68": [0.0] * 136})
        co = model.fit(mesh)
        fits.append({"sha256": sha, "identity": ident, **co.as_row(), "contour2d": model.contour2d(co).ravel().tolist()})
    write_table(rows, root / "aligned.parquet", ALIGNED)
    write_table(fits, root / "threedmm.parquet", THREEDMM)
    write_table([{"sha256": r["sha256"], "identity": r["identity"], "split": "test"} for r in rows], root / "splits.parquet", SPLITS)
    model.save(root / "threedmm_model.npz")


def _tiny_bundle(path, img_size: int):
    from faceswap.artifacts import save_bundle
    from faceswap_models.config import DecoderConfig, FusionConfig, MAEConfig, SwapConfig
    from faceswap_models.swap import SwapGenerator

    grid = 4
    ups = int(np.log2(img_size // grid))
    cfg = SwapConfig(mae=MAEConfig(img_size=img_size, patch_size=img_size // grid, dim=32, depth=1, heads=2,
                                   decoder_dim=16, decoder_depth=1, decoder_heads=2),
                     fusion=FusionConfig(dim=32, heads=2, num_blocks=1),
                     decoder=DecoderConfig(in_dim=32, grid_size=grid, channels=(16,) + (8,) * ups))
    torch.manual_seed(0)
    return save_bundle(path, SwapGenerator(cfg), align_size=CROP, template_scale=SCALE, meta={"test": True}, detect=section("detect"))


def _run(tmp_path, bundle, cfg):
    from stages.evaluate import run

    d = tmp_path
    return run(cfg, bundle, d / "aligned.parquet", d / "aligned", d / "splits.parquet", d / "threedmm.parquet",
               d / "threedmm_model.npz", d / "out" / "pairs.parquet", d / "out" / "grid.png", d / "out" / "eval.md")


def test_evaluate_stage_end_to_end(tmp_path, synthetic):
    """Model at the crop resolution (no resize): the baselines reproduce their definitions exactly;
    a random generator's outputs without a face mesh get a reason, not a crash."""

    _write_inputs(tmp_path, synthetic)
    from torchvision.models import inception_v3

    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), tmp_path / "inc.pth")
    from faceswap_models.auxiliary.hopenet import Hopenet

    torch.save(Hopenet().state_dict(), tmp_path / "hopenet.pth")
    cfg = section("evaluate", pairs=6, batch_size=4, grid_rows=3, inception_weights=str(tmp_path / "inc.pth"),
                         hopenet_weights=str(tmp_path / "hopenet.pth"), blended=False)
    m = _run(tmp_path, _tiny_bundle(tmp_path / "swap", CROP), cfg)
    assert m["pose_estimator"] == "hopenet"
    json.dumps(m)  # eval.json must serialise
    paste, copy = m["baselines"]["paste_source"], m["baselines"]["copy_target"]
    assert paste["shape_error"] == pytest.approx(0.0, abs=1e-5)  # output == source (refit; table holds float32)
    assert copy["pose_error_deg"] == pytest.approx(0.0, abs=1e-4)  # output == target
    assert copy["expression_error"] == pytest.approx(0.0, abs=1e-5)
    assert copy["shape_error"] > 0 and paste["pose_error_deg"] > 0
    assert copy["detection_rate"] == paste["detection_rate"] == 1.0  # real crops: every face found
    assert paste["id_margin"] > 0 > copy["id_margin"] and paste["id_margin"] == pytest.approx(-copy["id_margin"])
    assert paste["id_margin_ci95_low"] <= paste["id_margin"] <= paste["id_margin_ci95_high"]
    assert m["pairs"] == 6 and m["test_identities"] == 3 and m["test_images"] == 12
    assert m["gallery"]["identities"] == 3 and m["gallery"]["chance_top1"] == pytest.approx(1 / 3)
    for s in (m["model"], copy, paste):
        assert set(s) >= {"detection_rate", "id_top1", "id_top5", "id_top1_all", "id_top5_all", "id_margin",
                          "shape_error", "fid_inception", "misses", "gallery_identities", "chance_top1"}
    assert "model_blended" not in m  # blended=False
    assert copy["fid_inception"] >= 0
    # a random generator outputs noise: few detections; misses are wrong in retrieval, never embedded
    model = m["model"]
    assert model["detection_rate"] <= 0.5 and model["misses"] == 6 - model["detected"]
    assert model["id_top1"] <= model["detection_rate"]

    t = read_table(tmp_path / "out" / "pairs.parquet", EVAL_PAIRS).to_pylist()
    assert len(t) == 18 and {r["method"] for r in t} == {"model", "copy_target", "paste_source"}
    assert all(r["source_identity"] != r["target_identity"] for r in t)
    model_rows = [r for r in t if r["method"] == "model"]
    bad = [r for r in model_rows if r["status"] == "no_face"]
    assert len(bad) == m["model"]["misses"]
    assert all(r["shape_error"] is None and r["id_margin"] is None and r["rank_centres"] == -1 and r["detail"]
               for r in bad)
    assert all(r["shape_error"] is not None for r in model_rows if r["status"] == "ok")
    grid = cv2.imread(str(tmp_path / "out" / "grid.png"))
    assert grid.shape == (3 * 128, 3 * 128, 3)
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| shape_error |" in md and "paste_source" in md and "Chance: top-1 0.333" in md
    assert "Only 3 gallery identities" in md


def test_evaluate_stage_resizes_for_a_smaller_model(tmp_path, synthetic):
    """A 32px model on 128px crops: baselines go through the same down/up resize (refit, so the
    baseline errors are small but no longer exactly 0); a wrong crop size is a clear error."""

    _write_inputs(tmp_path, synthetic)
    m = _run(tmp_path, _tiny_bundle(tmp_path / "swap32", 32), section("evaluate", pairs=4, grid_rows=2, blended=False))
    assert m["img_size"] == 32 and m["crop_size"] == CROP
    paste, copy = m["baselines"]["paste_source"], m["baselines"]["copy_target"]
    assert paste["shape_error"] is not None and copy["pose_error_deg"] is not None
    assert copy["pose_error_deg"] < paste["pose_error_deg"] or paste["no_mesh"] or copy["no_mesh"]

    from faceswap.artifacts import save_bundle, load_bundle

    b = load_bundle(tmp_path / "swap32")
    save_bundle(tmp_path / "swap_wrong", b.generator, align_size=256, template_scale=SCALE, detect=section("detect"))
    with pytest.raises(ValueError, match="256px"):
        _run(tmp_path, tmp_path / "swap_wrong", section("evaluate", pairs=2, blended=False))


def _toy_mesh() -> np.ndarray:
    """(468, 3) mesh with the points `mesh_expression` reads placed on an upright face (eye distance 2)."""
    from faceswap.evaluation import features as F

    m = np.zeros((468, 3))
    m[F._MESH_EYE_LEFT[0], :2], m[F._MESH_EYE_RIGHT[1], :2] = (-1, 0), (1, 0)
    m[13, :2], m[14, :2] = (0, 1.5), (0, 1.6)  # inner lips: opening 0.1
    m[61, :2], m[291, :2] = (-0.5, 1.45), (0.5, 1.45)  # mouth corners, 0.05 above the upper lip
    m[159, :2], m[145, :2], m[386, :2], m[374, :2] = (-0.6, -0.1), (-0.6, 0.1), (0.6, -0.1), (0.6, 0.1)  # lids
    m[105, :2], m[334, :2] = (-0.6, -0.5), (0.6, -0.5)  # brows
    return m


def test_mesh_expression_reads_mouth_eyes_and_brows_whatever_the_face_placement() -> None:
    """The seven measures in eye-distance units; in-plane rotation, scale and shift change nothing;
    opening the mouth changes mouth_open alone, by the amount opened."""
    from faceswap.evaluation.features import EXPRESSION_MEASURES, mesh_expression

    m = _toy_mesh()
    e = dict(zip(EXPRESSION_MEASURES, mesh_expression(m)))
    assert e == pytest.approx({"mouth_open": 0.05, "mouth_width": 0.5, "corner_lift": 0.025, "eye_open_left": 0.1,
                               "eye_open_right": 0.1, "brow_left": 0.2, "brow_right": 0.2})
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = m.copy()
    moved[:, :2] = 3.0 * m[:, :2] @ rot.T + (40, 17)
    np.testing.assert_allclose(mesh_expression(moved), mesh_expression(m), atol=1e-12)
    opened = m.copy()
    opened[14, 1] += 0.4  # lower lip down by 0.2 eye distances
    d = mesh_expression(opened) - mesh_expression(m)
    assert d[0] == pytest.approx(0.2) and np.abs(d[1:]).max() < 1e-12


def test_expression_deviation_error_scores_an_ideal_swap_zero_and_paste_copy_not() -> None:
    """Identity-relative expression: two people whose measures differ mostly by identity (means 0 and
    5) and a little by expression (±1). An ideal swap — the source's person with the target's
    expression — scores 0; pasting the source scores its expression gap; copying the target, read as
    the source's person, its identity gap."""
    values = np.array([[0.0], [2.0], [5.0], [7.0], [np.nan]])  # (5, 1): person a = rows 0-1, b = 2-3 (+ a miss)
    labels = np.array(["a", "a", "b", "b", "b"])
    means, within = E.identity_deviations(values, labels)
    np.testing.assert_allclose(means[:, 0], [1.0, 1.0, 6.0, 6.0, 6.0])
    assert within[0] == pytest.approx(1.0)
    src, tgt = np.array([0]), np.array([3])  # source a (expression -1), target b (expression +1)
    ideal = np.array([[1.0 + 1.0]])  # a's mean moved by the target's expression
    err = {name: E.expression_deviation_error(out, means[src], values[tgt], means[tgt], within)[0]
           for name, out in (("ideal", ideal), ("paste", values[src]), ("copy", values[tgt]))}
    assert err["ideal"] == pytest.approx(0.0) and err["paste"] == pytest.approx(2.0) and err["copy"] == pytest.approx(5.0)
    # the raw geometric error ranks them the other way round: it rewards keeping the target's identity
    plain = {k: E.expression_geometry_error(v, values[tgt], np.array([1.0]))[0]
             for k, v in (("ideal", ideal), ("copy", values[tgt]))}
    assert plain["copy"] < plain["ideal"]


def test_expression_geometry_error_is_rms_of_scaled_differences() -> None:
    out = np.array([[1.0, 2.0], [np.nan, np.nan], [0.0, 0.0]])
    tgt = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    err = E.expression_geometry_error(out, tgt, np.array([1.0, 2.0]))
    assert err[0] == pytest.approx(np.sqrt(0.5)) and np.isnan(err[1]) and err[2] == 0


def test_blend_of_real_measures_scores_between_paste_and_copy_and_icc_is_the_identity_share() -> None:
    """E.intraclass_correlation / E.blend_deviation_errors: on measures that are 80 % identity, the ICC is
    ~0.8, copying the target scores far worse than pasting the source, and the shrinkage blend
    (w = ICC) scores below both — the best a swapper that sees one photo of each can do."""
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 6)  # 40 people x 6 photos
    person = rng.normal(0, 2.0, (40, 3))  # identity variance 4, expression variance 1: ICC 0.8
    values = person[ids] + rng.normal(0, 1.0, (len(ids), 3))
    icc = E.intraclass_correlation(values, ids)
    assert np.all(np.abs(icc - 0.8) < 0.1), icc
    src, tgt = E.make_pairs([str(i) for i in ids], 400, seed=0)
    err = E.blend_deviation_errors(values, ids, src, tgt, {"paste": 1.0, "copy": 0.0, "icc": icc})
    assert err["copy"] > 1.5 * err["paste"] and err["icc"] < 0.95 * err["paste"]

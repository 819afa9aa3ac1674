"""The data-preparation stages end to end on a tiny demo corpus, plus each stage's contract."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from faceswap.core.config import ConfigError, FilterConfig, IngestConfig, from_dict
from faceswap.faces.detectors import arcface_template, transform_points, yaw_from_landmarks
from faceswap.core.images import read_rgb
from faceswap.core.schemas import (
    ALIGNED, FILTERED, MANIFEST, REJECTS, SEGMENTS, SPLITS, THREEDMM, SchemaError, read_table,
)
from stages import align, ingest, segment, split, threedmm
from stages import filter as filter_stage
from paramsutil import section  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory):
    """Run ingest -> filter -> align -> segment -> threedmm -> split once; return the work dir."""
    work = tmp_path_factory.mktemp("work")
    src = work / "raw"
    shutil.copytree(tiny_corpus, src)
    c = work / "cache"
    m = {"ingest": ingest.run(section("ingest", source="folder", root=str(src)), work / "manifest.parquet", c)}
    m["filter"] = filter_stage.run(section("filter", workers=1), section("detect"), work / "manifest.parquet",
                                   work / "filtered.parquet", work / "rejects.parquet", c)
    m["align"] = align.run(section("align", workers=1), section("detect"), 10**8, work / "filtered.parquet",
                           work / "aligned", work / "aligned.parquet", work / "align_rejects.parquet", c)
    m["segment"] = segment.run(section("segment", workers=1), work / "aligned.parquet", work / "aligned",
                               work / "parsing", work / "segments.parquet")
    m["threedmm"] = threedmm.run(section("threedmm", workers=1, n_shape=3, n_exp=3), work / "aligned.parquet",
                                 work / "aligned", work / "meshes", work / "threedmm.parquet",
                                 work / "threedmm_model.npz", work / "threedmm_rejects.parquet", c)
    m["split"] = split.run(section("split"), work / "threedmm.parquet", work / "splits.parquet")
    return work, m


def test_filter_invariant_and_demo_reasons(prepared):
    work, m = prepared
    manifest = read_table(work / "manifest.parquet", MANIFEST)
    kept = read_table(work / "filtered.parquet", FILTERED).column("path").to_pylist()
    rej = read_table(work / "rejects.parquet", REJECTS).to_pylist()
    assert sorted(kept + [r["path"] for r in rej]) == sorted(manifest.column("path").to_pylist())
    reasons = {Path(r["path"]).name: r["reason"] for r in rej}
    assert reasons["x_no_face.jpg"] == "no_face"
    assert reasons["x_tiny.png"] == "too_small"
    assert reasons["x_duplicate_of_id000.jpg"] == "near_duplicate"
    assert m["filter"]["accepted"] >= 15


def test_alignment_maps_landmarks_onto_the_template(prepared):
    work, _ = prepared
    rows = read_table(work / "aligned.parquet", ALIGNED).to_pylist()
    template = arcface_template(256, section("align").template_scale)
    for r in rows:
        lm5 = np.asarray(r["landmarks5"]).reshape(5, 2)
        # Least-squares similarity: centroids coincide exactly, eyes land near the template
        # (expressions such as wide smiles legitimately leave the mouth corners off it).
        np.testing.assert_allclose(lm5.mean(0), template.mean(0), atol=0.05)
        assert np.linalg.norm(lm5[:2] - template[:2], axis=1).max() < 12.0
        iod = np.linalg.norm(lm5[1] - lm5[0]) / np.linalg.norm(template[1] - template[0])
        assert 0.85 < iod < 1.15
        lm68 = np.asarray(r["landmarks68"]).reshape(68, 2)
        assert (lm68 > 0).all() and (lm68 < 256).all(), lm68.max(0)
        img = read_rgb(work / "aligned" / r["crop"])
        assert img.shape == (256, 256, 3)
    # The matrix is the one that was applied: source landmarks map to the stored crop landmarks.
    src = {r["sha256"]: r for r in read_table(work / "filtered.parquet", FILTERED).to_pylist()}
    r = rows[0]
    mat = np.asarray(r["matrix"]).reshape(2, 3)
    mapped = transform_points(np.asarray(src[r["sha256"]]["landmarks5"]).reshape(5, 2), mat)
    np.testing.assert_allclose(mapped, np.asarray(r["landmarks5"]).reshape(5, 2), atol=1e-3)


def test_parsing_maps_have_face_parts_in_the_right_places(prepared):
    work, _ = prepared
    import cv2
    rows = read_table(work / "segments.parquet", SEGMENTS).to_pylist()
    assert len(rows) == len(read_table(work / "aligned.parquet", ALIGNED))
    lab = cv2.imread(str(work / "parsing" / rows[0]["parsing"]), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (256, 256) and set(np.unique(lab)) >= {0, 1, 2, 3, 4, 5}
    ys = {k: np.nonzero(lab == k)[0].mean() for k in (2, 3, 4, 5)}
    assert ys[2] < ys[3] < ys[4] < ys[5]  # brows above eyes above nose above mouth
    assert abs(sum(rows[0]["class_fractions"]) - 1) < 1e-5


def test_threedmm_table_and_split_are_identity_disjoint(prepared):
    work, m = prepared
    t = read_table(work / "threedmm.parquet", THREEDMM).to_pylist()
    assert t and all(len(r["pose"]) == 3 and len(r["camera"]) == 3 for r in t)
    assert all(len(r["shape"]) == m["threedmm"]["n_shape"] for r in t)
    assert all(np.isfinite(r["fit_rmse"]) and r["fit_rmse"] < 3.0 for r in t)
    s = read_table(work / "splits.parquet", SPLITS).to_pylist()
    by_split: dict[str, set] = {}
    for r in s:
        by_split.setdefault(r["split"], set()).add(r["identity"])
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])


def test_threedmm_metrics_cross_validate_expression_and_report_shape_icc(prepared):
    """5 identities x 4 images: the identity-grouped expression CV runs (or says why not) and the metrics
    stay JSON-plain (metrics/threedmm.json)."""
    import json

    from faceswap.evaluation.features import EXPRESSION_MEASURES

    _, m = prepared
    t = m["threedmm"]
    json.dumps(t, allow_nan=False)
    cv = t["expression_cv"]
    assert {"folds", "identities", "faces", "target", "predictors", "r2", "skipped"} <= set(cv)
    if cv["identities"] >= 4:
        assert cv["skipped"] is None and cv["folds"] == min(5, cv["identities"])
        assert set(cv["r2"]) == set(EXPRESSION_MEASURES)
        assert all(v is None or v <= 1 for v in cv["r2"].values())
    else:
        assert cv["r2"] is None and "identities" in cv["skipped"]
    assert 0 <= t["shape_icc_min"] <= t["shape_icc_median"] <= 1 and 0 <= t["shape_icc_pooled"] <= 1


def test_threedmm_rerun_reuses_the_learned_model(prepared, tmp_path):
    work, m = prepared
    assert m["threedmm"]["model_learned_this_run"] is True
    again = threedmm.run(section("threedmm", workers=1, n_shape=3, n_exp=3), work / "aligned.parquet", work / "aligned",
                         work / "meshes", tmp_path / "t.parquet", tmp_path / "m.npz", tmp_path / "r.parquet",
                         work / "cache")
    assert again["model_learned_this_run"] is False and again["meshed_this_run"] == 0
    a = read_table(work / "threedmm.parquet", THREEDMM).column("shape").to_pylist()
    assert read_table(tmp_path / "t.parquet", THREEDMM).column("shape").to_pylist() == a


def test_new_alignment_settings_invalidate_parsing_maps_and_meshes(prepared, tmp_path):
    """Files downstream of align are named after the crop, whose name fingerprints the alignment."""
    work, m = prepared
    for d in ("aligned", "parsing", "meshes"):
        shutil.copytree(work / d, tmp_path / d)
    a = align.run(section("align", workers=1, template_scale=1.2), section("detect"), 10**8, work / "filtered.parquet",
                  tmp_path / "aligned", tmp_path / "aligned.parquet", tmp_path / "align_rejects.parquet",
                  tmp_path / "cache")
    assert a["warped"] == m["align"]["aligned"]
    s = segment.run(section("segment", workers=1), tmp_path / "aligned.parquet", tmp_path / "aligned",
                    tmp_path / "parsing", tmp_path / "segments.parquet")
    assert s["parsed_this_run"] == s["faces"] == a["aligned"]
    t = threedmm.run(section("threedmm", workers=1, n_shape=3, n_exp=3), tmp_path / "aligned.parquet",
                     tmp_path / "aligned", tmp_path / "meshes", tmp_path / "t.parquet", tmp_path / "m.npz",
                     tmp_path / "r.parquet", tmp_path / "cache")
    assert t["meshed_this_run"] == a["aligned"] and t["model_learned_this_run"] is True
    # the superseded files are gone: one crop / map / mesh per face
    assert len(list((tmp_path / "aligned").rglob("*.png"))) == a["aligned"]
    assert len(list((tmp_path / "parsing").rglob("*.png"))) == a["aligned"]
    assert len(list((tmp_path / "meshes").rglob("*.npy"))) == a["aligned"]


def test_threedmm_learning_sample_is_bounded_and_deterministic():
    rows = [{"sha256": f"{i:064x}", "identity": f"id{i % 7}"} for i in range(1000)]
    s = threedmm.learning_sample(rows, 100)
    assert len(s) == 100 and len({r["sha256"] for r in s}) == 100
    assert s == threedmm.learning_sample(list(reversed(rows)), 100)
    assert threedmm.learning_sample(rows[:50], 100) == rows[:50]


def test_split_is_seeded():
    ids = [f"id{i}" for i in range(20)]
    a = split.assign_identities(ids, section("split", seed=1))
    assert a == split.assign_identities(list(reversed(ids)), section("split", seed=1))
    assert a != split.assign_identities(ids, section("split", seed=2))
    assert sum(v == "test" for v in a.values()) == 3


def test_rerun_after_adding_images_reads_only_new_ones(prepared, face_rgb, tmp_path):
    from imageutil import write_rgb
    work, m = prepared
    src = work / "raw"
    c = work / "cache"
    again = ingest.run(section("ingest", source="folder", root=str(src)), tmp_path / "manifest.parquet", c)
    assert again["read"] == 0 and again["files"] == m["ingest"]["files"]
    write_rgb(src / "id_new" / "new.jpg", np.ascontiguousarray(np.roll(face_rgb, 25, axis=1)))
    grown = ingest.run(section("ingest", source="folder", root=str(src)), tmp_path / "manifest.parquet", c)
    assert grown["read"] == 1 and grown["files"] == m["ingest"]["files"] + 1
    f = filter_stage.run(section("filter", workers=1, phash_max_distance=-1), section("detect"),
                         tmp_path / "manifest.parquet", tmp_path / "filtered.parquet", tmp_path / "rejects.parquet", c)
    assert f["inspected"] == 1
    a = align.run(section("align", workers=1), section("detect"), 10**8, tmp_path / "filtered.parquet", work / "aligned",
                  tmp_path / "aligned.parquet", tmp_path / "align_rejects.parquet", c)
    assert a["warped"] == 1


def test_config_rejects_unknown_keys_and_wrong_types():
    from paramsutil import RAW

    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(FilterConfig, {**RAW["filter"], "blur_minimum": 3}, "filter")
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict(FilterConfig, {**RAW["filter"], "blur_min": "sharp"}, "filter")
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(IngestConfig, {**RAW["ingest"], "source": "internet"}, "ingest")
    with pytest.raises(ConfigError, match="filter: missing key 'blur_min'"):
        from_dict(FilterConfig, {k: v for k, v in RAW["filter"].items() if k != "blur_min"}, "filter")
    assert from_dict(FilterConfig, {**RAW["filter"], "blur_min": 10}, "filter").blur_min == 10.0


def test_params_yaml_loads_every_section():
    from faceswap import params
    from faceswap.core import config as C

    p = params.load(Path(__file__).parents[1] / "params.yaml")
    for cls, name in [(C.IngestConfig, "ingest"), (C.DetectConfig, "detect"), (C.FilterConfig, "filter"),
                      (C.AlignConfig, "align"), (C.SegmentConfig, "segment"), (C.ThreeDMMConfig, "threedmm"),
                      (C.SplitConfig, "split")]:
        assert isinstance(getattr(p, name), cls)


def test_schema_check_on_read(tmp_path):
    import pyarrow as pa
    pq.write_table(pa.table({"path": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="missing column"):
        read_table(tmp_path / "bad.parquet", MANIFEST)


def test_yaw_sign_flips_for_mirrored_landmarks():
    lm = np.array([[100, 100], [160, 100], [140, 130], [110, 160], [150, 160]], float)
    mirrored = lm.copy()
    mirrored[:, 0] = 256 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]
    assert yaw_from_landmarks(lm) > 5 and yaw_from_landmarks(mirrored) == pytest.approx(-yaw_from_landmarks(lm))


def test_retinaface_loads_local_weights_and_errors_name_the_file(tmp_path, face_rgb):
    import torch
    from faceswap.faces.detectors import RetinaFaceDetector, build_retinaface
    from faceswap.core.weights import WeightsError
    torch.manual_seed(0)
    torch.save(build_retinaface().state_dict(), tmp_path / "r50.pth")
    det = RetinaFaceDetector(section("detect", backend="retinaface", retinaface_weights=str(tmp_path / "r50.pth"),
                                          max_side=160, retinaface_threshold=0.0))
    faces = det.detect(face_rgb)
    assert all(f.landmarks5.shape == (5, 2) and np.isfinite(f.box).all() for f in faces)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth"):
        RetinaFaceDetector(section("detect", backend="retinaface", retinaface_weights=str(tmp_path / "bad.pth")))
    torch.save({"body.conv1.weight": torch.zeros(3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="shape.pth"):
        RetinaFaceDetector(section("detect", backend="retinaface", retinaface_weights=str(tmp_path / "shape.pth")))

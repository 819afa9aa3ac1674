"""The referee on real numbers: the evaluate stage + the default register gates on real aligned demo
faces. A randomly initialised bundle (noise) scores low detection and fails the gate; "paste source"
passes identity and fails pose; "copy target" fails identity. Nothing here is a constructed metric
value: every number comes from the detector, recogniser and 3DMM fit on real crops."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from faceswap.core.config import load_params, load_section  # noqa: E402
from faceswap.core.schemas import ALIGNED, SPLITS, THREEDMM, read_table, write_table  # noqa: E402
from stages import align, ingest, threedmm  # noqa: E402
from stages import filter as filter_stage  # noqa: E402
from faceswap.serving import registry as R  # noqa: E402
from faceswap.data.records import alignment  # noqa: E402
from paramsutil import section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDENTITIES, PER_ID = 10, 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Demo corpus (10 identities x 4) -> filter -> align -> threedmm; 6 identities test, the rest
    distractors (splits.parquet). Returns the folder."""
    from faceswap.data.demo_corpus import build_demo_corpus

    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("sanity")
    raw = build_demo_corpus(work / "raw", identities=IDENTITIES, per_identity=PER_ID)
    c = work / "cache"
    ingest.run(section("ingest", source="folder", root=str(raw)), work / "manifest.parquet", c)
    filter_stage.run(section("filter", workers=1), section("detect"), work / "manifest.parquet", work / "filtered.parquet",
                     work / "rejects.parquet", c)
    align.run(section("align", workers=1), section("detect"), 10**8, work / "filtered.parquet", work / "aligned",
              work / "aligned.parquet", work / "align_rejects.parquet", c)
    threedmm.run(section("threedmm", workers=1, n_shape=5, n_exp=5), work / "aligned.parquet", work / "aligned",
                 work / "meshes", work / "threedmm.parquet", work / "threedmm_model.npz",
                 work / "threedmm_rejects.parquet", c)
    fits = read_table(work / "threedmm.parquet", THREEDMM).to_pylist()
    ids = sorted({r["identity"] for r in fits})
    assert len(ids) >= 8, ids  # the corpus and the data stages keep most identities
    test_ids = set(ids[:6])
    write_table([{"sha256": r["sha256"], "identity": r["identity"],
                  "split": "test" if r["identity"] in test_ids else "train"} for r in fits],
                work / "splits.parquet", SPLITS)
    return work


@pytest.fixture(scope="module")
def evaluated(prepared):
    """Evaluate a random-init bundle of the demo training size (raw and blended) on `prepared`."""
    from bench.evaluate import demo_bundle
    from stages.evaluate import run

    work = prepared
    params = load_params(REPO / "params.yaml")
    bundle = demo_bundle(work / "random_bundle", params, alignment(work / "aligned.parquet"))
    # 40 pairs: the jaw story needs >= 5 pairs on each side; 24 gave 3-7 wider ones across machines
    cfg = section("evaluate", pairs=40, batch_size=8, grid_rows=2, bootstrap=500)
    m = run(cfg, bundle, work / "aligned.parquet", work / "aligned", work / "splits.parquet",
            work / "threedmm.parquet", work / "threedmm_model.npz", work / "out" / "pairs.parquet",
            work / "out" / "grid.png", work / "out" / "eval.md", detect=section("detect"))
    json.dumps(m, allow_nan=False)  # eval.json is strict JSON
    return m


def _gates():
    return load_section(R.RegisterConfig, "register", REPO / "params.yaml")


def _failed(metrics: dict) -> dict[str, list[dict]]:
    cfg = _gates()
    out: dict[str, list[dict]] = {}
    for g in R.check_gates(metrics, cfg.gates, cfg.primary_metric):
        if not g["passed"]:
            out.setdefault(g["metric"], []).append(g)
    return out


def test_gallery_has_distractors_and_prints_chance(evaluated):
    g = evaluated["gallery"]
    assert g["test_identities"] == 6 and g["distractor_identities"] >= 2
    assert g["identities"] == g["test_identities"] + g["distractor_identities"]
    assert g["chance_top1"] == pytest.approx(1 / g["identities"])
    for block in (evaluated["model"], *evaluated["baselines"].values()):
        assert block["chance_top1"] == g["chance_top1"] and block["gallery_identities"] == g["identities"]


def test_baselines_on_real_faces_behave_as_defined(evaluated):
    copy, paste = evaluated["baselines"]["copy_target"], evaluated["baselines"]["paste_source"]
    assert copy["detection_rate"] >= 0.9 and paste["detection_rate"] >= 0.9
    # identity: pasting the source is retrieved as the source, copying the target is not
    assert paste["id_top1"] >= 0.6 and copy["id_top1"] <= 0.2
    assert paste["id_margin_ci95_low"] > 0 > copy["id_margin_ci95_high"]
    # pose / expression: copying the target matches them far better than pasting the source
    assert copy["pose_error_deg"] < paste["pose_error_deg"] and copy["expression_error"] < paste["expression_error"]
    assert copy["expression_geometry_error"] < 0.6 * paste["expression_geometry_error"]
    # measured from each person's own mean, both known-bad outputs are off: copy by the identity gap
    # (the target's geometry read as the source's person), paste by the expression gap. Since the demo
    # corpus carries expression offsets (version 6) the identity gap is smaller than the expression gap
    # (ICC < 0.5), so copy may score below paste here: copy_target fails the identity gate, not this one
    # (tests/test_expression_gate_sanity.py checks the ranking on all 64 identities' crops)
    assert copy["expression_deviation_error"] > 0.5 and paste["expression_deviation_error"] > 0.5
    # the shape story: on pairs with a wider source, copying keeps the target's jaw, pasting has the source's
    for side in ("wider", "narrower"):
        assert copy[f"jaw_pairs_{side}"] >= 5 and paste[f"jaw_pairs_{side}"] == copy[f"jaw_pairs_{side}"]
        assert abs(copy[f"jaw_shift_{side}_source"]) < 0.35 and abs(paste[f"jaw_shift_{side}_source"] - 1) < 0.35


def test_random_init_bundle_scores_low_detection_and_fails_the_gate(evaluated):
    model = evaluated["model"]
    assert model["detection_rate"] <= 0.3, model
    assert model["id_top1"] <= model["detection_rate"]  # a miss is never a hit
    assert model["misses"] + model["detected"] == evaluated["pairs"]
    failed = _failed(evaluated)
    assert "model.detection_rate" in failed
    assert "short by" in failed["model.detection_rate"][0]["detail"]
    assert evaluated["model_blended"]["detection_rate"] >= 0.0  # scored, not skipped
    assert not evaluated["blended_note"].startswith("not scored")


def test_paste_source_passes_identity_and_fails_pose(evaluated):
    failed = _failed({**evaluated, "model": evaluated["baselines"]["paste_source"]})
    assert "model.id_top1" not in failed and "model.detection_rate" not in failed
    assert "model.pose_error_deg" in failed


def test_copy_target_fails_identity(evaluated):
    failed = _failed({**evaluated, "model": evaluated["baselines"]["copy_target"]})
    assert "model.id_top1" in failed
    assert "model.pose_error_deg" not in failed and "model.detection_rate" not in failed


def test_missing_photos_are_misses_with_a_reason_not_a_crash(tmp_path):
    from bench.evaluate import demo_bundle
    from faceswap.evaluation.suite import blended_pairs

    bundle = demo_bundle(tmp_path / "b", load_params(REPO / "params.yaml"), (256, 1.4))
    rows = [{"path": str(tmp_path / "gone.jpg"), "matrix": [1, 0, 0, 0, 1, 0]},
            {"path": str(tmp_path / "also_gone.png"), "matrix": [1, 0, 0, 0, 1, 0]}]
    from faceswap.serving.inference import SwapPipeline

    pipe = SwapPipeline.from_bundle(bundle, detect=section("detect"))
    crops, fails = blended_pairs(pipe, rows, np.array([0, 1]), np.array([1, 0]), 256)
    assert crops == [None, None]
    assert all(f and "gone" in f for f in fails), fails


class _Fixed(torch.nn.Module):
    """A 'generator' that returns the target (copy) or the source (paste)."""

    def __init__(self, which: str) -> None:
        super().__init__()
        self.which = which
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, source, target):
        return target if self.which == "target" else source


def test_in_training_validator_tells_noise_copy_and_paste_apart(prepared):
    """training/validation.py on real crops: a random-init generator is mostly not a face; copying
    the target is a face with the wrong identity; pasting the source is retrieved as the source."""
    from bench.evaluate import demo_bundle
    from faceswap.artifacts import load_bundle
    from faceswap.training.validation import GateSelector, SwapValidator

    work = prepared
    split = {r["sha256"]: r["split"] for r in read_table(work / "splits.parquet", SPLITS).to_pylist()}
    fits = sorted(read_table(work / "threedmm.parquet", THREEDMM).to_pylist(), key=lambda r: r["sha256"])
    aligned = {r["sha256"]: r["crop"] for r in read_table(work / "aligned.parquet", ALIGNED).to_pylist()}
    val = [r for r in fits if split[r["sha256"]] == "test"]
    other = [r for r in fits if split[r["sha256"]] != "test"]
    v = SwapValidator([str(work / "aligned" / aligned[r["sha256"]]) for r in val], [r["identity"] for r in val],
                      np.array([r["pose"] for r in val]), str(work / "threedmm_model.npz"), 64,
                      distractor_paths=[str(work / "aligned" / aligned[r["sha256"]]) for r in other],
                      distractor_identities=[r["identity"] for r in other], pairs=16, seed=0,
                      expressions=np.array([r["expression"] for r in val]))
    try:
        noise = v(load_bundle(demo_bundle(work / "rand", load_params(REPO / "params.yaml"),
                                          alignment(work / "aligned.parquet"))).generator)
        copy, paste = v(_Fixed("target")), v(_Fixed("source"))
        reg = load_params(REPO / "params.yaml")["register"]
        select = GateSelector(v, reg["gates"], reg["primary_metric"], reg["higher_is_better"])
        keys = {name: select(vals) for name, vals in (("noise", noise), ("copy", copy), ("paste", paste))}
        baselines = v.baselines()
    finally:
        v.close()
    # export: best_val ranks snapshots by the registry's gates on val; each known-bad output fails some
    n_gates = 1 + sum(len(b) if isinstance(b, list) else 1 for rule in reg["gates"].values() for b in rule.values())
    assert all(k[0] < n_gates for k in keys.values())
    assert baselines["copy_target"]["id_top1"] == pytest.approx(copy["val/id_top1"])
    assert baselines["paste_source"]["expression_deviation_error"] == pytest.approx(
        paste["val/expression_deviation_error"])
    perfect = {**copy, "val/id_top1": 1.0, "val/id_margin": 0.2,  # the target's pose and expression, the source's identity
               "val/expression_deviation_error": 0.0}
    assert select(perfect)[0] == n_gates and select(perfect) > max(keys.values())
    assert noise["val/detection_rate"] <= 0.3 and noise["val/id_top1"] <= noise["val/detection_rate"]
    assert copy["val/detection_rate"] >= 0.9 and copy["val/id_top1"] <= 0.2 and copy["val/id_margin"] < 0
    assert paste["val/id_top1"] >= 0.6 and paste["val/id_margin"] > 0
    assert copy["val/pose_error_deg"] < paste["val/pose_error_deg"]
    assert copy["val/expression_error"] < paste["val/expression_error"]
    assert copy["val/expression_geometry_error"] < 0.6 * paste["val/expression_geometry_error"]
    # both off; copy by the identity gap, which on the expression corpus may be below paste's (see above)
    assert copy["val/expression_deviation_error"] > 0.5 and paste["val/expression_deviation_error"] > 0.5
    # G(s, s) = s: the source through 64 px compared with itself, far closer than to the target
    assert paste["val/expression_deviation_error_self"] < 0.7 * paste["val/expression_deviation_error"]
    # G(s, s) = s for both: their expression floor is the real crop's own reading through 64 px
    assert paste["val/expression_error_self"] == pytest.approx(copy["val/expression_error"], abs=0.5)
    assert paste["val/expression_error_self"] < paste["val/expression_error"]
    # reconstructions G(s, s): noise draws no identity; copy and paste both return the source there,
    # so their ceiling is high while only paste transfers it
    assert noise["val/id_top1_self"] <= 0.3
    assert copy["val/id_top1_self"] >= 0.6 and paste["val/id_top1_self"] >= 0.6

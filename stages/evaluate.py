"""evaluate: swap fixed seeded test pairs (source identity != target identity) with the swap-model
bundle and measure face detection, identity retrieval and margin, shape / expression / pose error and
realism for the raw network output, the CLI's blended full-resolution output and two trivial
baselines on the same pairs -> metrics/eval/<architecture>.json, the per-pair table, a grid, a report.

Metric definitions, the gallery and the offline substitutes: docs/evaluation.md.
Every output first goes through the evaluation's face detector (the mediapipe face mesh): an output
with no detected face is a *miss* — it counts as wrong in ID retrieval, has no margin and no 3DMM
errors, and lowers the detection rate. Identity retrieval is against a gallery of the test
identities plus distractor identities from the other splits (each query's own source and target
images left out), so chance is printed and small.
Baselines: `copy_target` (output = target crop) and `paste_source` (output = source crop). Both
pass through the same resize to the model's img_size and back that the model's inputs and output
do, so differences are the model's, not the resolution's.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from faceswap import params
from faceswap.artifacts import load_bundle
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import DetectConfig
from faceswap.core.images import encode_image, read_rgb
from faceswap.core.io import atomic_write_bytes, atomic_write_text
from faceswap.core.layout import DATA, ModelOutputs
from faceswap.core.schemas import EVAL_PAIRS, write_table
from faceswap.evaluation.config import EvaluateConfig
from faceswap.evaluation.features import FaceAttributes, Recogniser, build_recogniser
from faceswap.evaluation.suite import (
    Resolution, collect_outputs, distractor_set, eval_grid, eval_metrics, report_markdown, score_outputs, test_set,
)
from faceswap.faces.threedmm import LinearFaceModel
from faceswap.serving.inference import SwapPipeline

FLOWFACEPP = ModelOutputs("flowfacepp")  # the CLI's defaults: the default architecture's paths


def run(cfg: EvaluateConfig, bundle_dir: str | Path, aligned: str | Path, aligned_dir: str | Path,
        splits: str | Path, threedmm: str | Path, threedmm_model: str | Path, out_pairs: str | Path,
        out_grid: str | Path, out_report: str | Path, *, detect: DetectConfig | None = None,
        recogniser: Recogniser | None = None, attributes: FaceAttributes | None = None) -> dict[str, Any]:
    """Evaluate the bundle on seeded test pairs; writes the per-pair table, grid and report.

    `detect` is the photo detector of the blended (swap CLI) path (params `detect`; None: the bundle's);
    `recogniser` / `attributes` may be passed in (tests, bench) instead of being built from cfg.
    Returns the metrics written to eval.json.
    """
    t0 = time.perf_counter()
    test_rows = test_set(aligned, splits, threedmm)
    rows = test_rows + distractor_set(aligned, splits, cfg.gallery_distractor_images)
    bundle = load_bundle(bundle_dir, cfg.device)
    crops = [read_rgb(Path(aligned_dir) / r["crop"]) for r in rows]  # (S, S, 3) uint8 each
    if not crops:
        raise ValueError("evaluate: the test split has no aligned, fitted faces")
    crop_size = crops[0].shape[0]
    if crop_size != bundle.align_size:
        raise ValueError(f"evaluate: crops are {crop_size}px but the model was trained on {bundle.align_size}px "
                         "crops (generator.json align.size); re-run align with the model's size")
    res = Resolution(crop_size, bundle.img_size)
    rec = recogniser or build_recogniser(cfg.recogniser, cfg.recogniser_weights, cfg.device)
    attr = attributes or FaceAttributes(LinearFaceModel.load(threedmm_model))
    pipe = SwapPipeline.from_bundle(bundle, detect=detect, device=cfg.device) if cfg.blended else None
    try:
        collected = collect_outputs(cfg, bundle, rows, crops, len(test_rows), res, rec, attr, pipe)
    finally:
        if attributes is None:
            attr.close()
    summaries, table = score_outputs(cfg, collected, rec.name)
    write_table(table, out_pairs, EVAL_PAIRS)
    atomic_write_bytes(out_grid, encode_image(eval_grid(cfg, collected), "png"))
    m = eval_metrics(cfg, collected, summaries, res, rec.name, time.perf_counter() - t0)
    atomic_write_text(out_report, report_markdown(m))
    return m


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=str(FLOWFACEPP.bundle), help="swap-model bundle directory")
    p.add_argument("--aligned", default=str(DATA.aligned))
    p.add_argument("--aligned-dir", default=str(DATA.aligned_dir))
    p.add_argument("--splits", default=str(DATA.splits))
    p.add_argument("--threedmm", default=str(DATA.threedmm))
    p.add_argument("--threedmm-model", default=str(DATA.threedmm_model))
    p.add_argument("--out", default=str(DATA.eval_pairs(FLOWFACEPP.architecture)))
    p.add_argument("--grid", default=str(FLOWFACEPP.eval_grid))
    p.add_argument("--report", default=str(FLOWFACEPP.eval_report))
    a = p.parse_args(argv)
    torch.manual_seed(0)
    p = params.load(a.params)
    m = run(p.evaluate, a.model, a.aligned, a.aligned_dir, a.splits,
            a.threedmm, a.threedmm_model, a.out, a.grid, a.report, detect=p.detect)
    write_metrics(a.metrics, m)
    print(json.dumps({k: m[k] for k in ("model", "model_blended", "baselines", "gallery") if k in m}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

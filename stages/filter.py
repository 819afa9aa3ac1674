"""filter: reason-coded quality rejects -> filtered.parquet + rejects.parquet.

Invariant (tested): every manifest row lands in exactly one of the two tables.
Per-image checks run on `prep.executor` (worker processes or Ray Data) and are cached by content
hash, saved as they come so a killed run resumes; the near-duplicate
pass (perceptual hash, multi-index buckets) runs over all survivors, keeping the first by path.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np

from faceswap import params
from faceswap.core.cache import RowCache
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import DetectConfig, FilterConfig, PrepConfig
from faceswap.core.executor import map_items
from faceswap.core.images import BadImage, decode_rgb, hamming64, laplacian_variance, phash64
from faceswap.core.io import fingerprint
from faceswap.core.layout import DATA
from faceswap.core.schemas import FILTERED, MANIFEST, REJECTS, read_table, write_table
from faceswap.faces.detectors import build_detector, yaw_from_landmarks

CODE_VERSION = 1
REASONS = (
    "empty_file", "undecodable", "truncated", "unreadable", "too_large", "broken_symlink",
    "symlink_outside_root", "too_small", "no_face", "multiple_faces", "face_too_small",
    "extreme_pose", "too_blurry", "near_duplicate",
)


def _make_state(detect: DetectConfig, cfg: FilterConfig):
    return build_detector(detect, min_score=cfg.min_score), cfg


def gpu_detector(detect: DetectConfig, prep: PrepConfig | None) -> tuple[DetectConfig, bool]:
    """(the detector config the workers build, whether they take a GPU): RetinaFace on `cuda` when
    prep.use_gpu. The device is not part of any fingerprint: outputs do not depend on where it ran."""
    if prep is not None and prep.use_gpu and detect.backend == "retinaface":
        return replace(detect, device="cuda"), True
    return detect, False


def inspect_image(state, path: str) -> dict:
    """All per-image checks; returns {'reason', 'detail'} for a reject, else the accepted fields."""
    detector, cfg = state
    try:
        img = decode_rgb(path, cfg.max_pixels)
    except BadImage as e:
        return {"reason": e.reason, "detail": e.detail}
    except OSError as e:
        return {"reason": "unreadable", "detail": str(e)}
    h, w = img.shape[:2]
    if min(h, w) < cfg.min_side:
        return {"reason": "too_small", "detail": f"{w}x{h} below filter.min_side={cfg.min_side}"}
    faces = detector.detect(img)
    if not faces:
        return {"reason": "no_face", "detail": f"no face with detector score >= {cfg.min_score}"}
    if len(faces) > 1 and faces[0].area < cfg.dominance_ratio * faces[1].area:
        return {"reason": "multiple_faces",
                "detail": f"{len(faces)} faces, largest/second area {faces[0].area / max(faces[1].area, 1e-9):.2f}"
                          f" < filter.dominance_ratio={cfg.dominance_ratio}"}
    face = faces[0]
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    if side < cfg.min_face_px:
        return {"reason": "face_too_small", "detail": f"face box {side:.0f}px < filter.min_face_px={cfg.min_face_px}"}
    yaw = yaw_from_landmarks(face.landmarks5)
    if abs(yaw) > cfg.max_yaw:
        return {"reason": "extreme_pose", "detail": f"|yaw| {abs(yaw):.0f} deg > filter.max_yaw={cfg.max_yaw}"}
    blur = laplacian_variance(img, tuple(face.box))
    if blur < cfg.blur_min:
        return {"reason": "too_blurry", "detail": f"Laplacian variance {blur:.1f} < filter.blur_min={cfg.blur_min}"}
    return {"reason": None, "width": w, "height": h, "face_box": face.box.tolist(), "score": face.score,
            "landmarks5": face.landmarks5.reshape(-1).tolist(), "n_faces": len(faces), "yaw": yaw,
            "blur": blur, "phash": phash64(face_region(img, face.box))}


def face_region(img: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """Square crop around the face box (+margin): what near-duplicate hashing compares."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * (0.5 + margin)
    h, w = img.shape[:2]
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
    return img[y0:y1, x0:x1] if x1 - x0 >= 8 and y1 - y0 >= 8 else img


def near_duplicates(paths: list[str], hashes: list[int], max_distance: int) -> dict[int, tuple[int, int]]:
    """Index i -> (index kept, distance) for images within `max_distance` bits of an earlier one.

    Multi-index hashing: split 64 bits into max_distance+1 chunks; by pigeonhole two hashes within
    the distance share at least one chunk exactly, so only bucket-mates are compared.
    """
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    n_chunks = max_distance + 1
    bounds = [int(b) for b in np.linspace(0, 64, n_chunks + 1)]
    buckets: list[dict[int, list[int]]] = [{} for _ in range(n_chunks)]
    dup: dict[int, tuple[int, int]] = {}
    for i in order:
        h = hashes[i] & 0xFFFFFFFFFFFFFFFF
        chunks = [(h >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in zip(bounds[:-1], bounds[1:])]
        best = None
        for c, b in zip(chunks, buckets):
            for j in b.get(c, ()):
                d = hamming64(hashes[i], hashes[j])
                if d <= max_distance and (best is None or d < best[1]):
                    best = (j, d)
        if best is not None:
            dup[i] = best
            continue
        for c, b in zip(chunks, buckets):
            b.setdefault(c, []).append(i)
    return dup


def run(cfg: FilterConfig, detect: DetectConfig, manifest: str | Path, out_filtered: str | Path,
        out_rejects: str | Path, cache_dir: str | Path | None = None, prep: PrepConfig | None = None) -> dict:
    """Split the manifest into accepted and rejected rows; returns counts per reason."""
    table = read_table(manifest, MANIFEST)
    rows = table.to_pylist()
    key_cfg = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "phash_max_distance")}
    cache = RowCache.for_stage(cache_dir, "filter", fingerprint(CODE_VERSION, key_cfg, asdict(detect)), prep)
    results: list[dict | None] = [None] * len(rows)
    todo = []
    for i, r in enumerate(rows):
        if r["error"]:
            results[i] = {"reason": r["error"], "detail": r["detail"]}
        elif (hit := cache.get(r["sha256"])) is not None:
            results[i] = hit
        else:
            todo.append(i)
    # Identical content is inspected once.
    first_of: dict[str, int] = {}
    unique = [i for i in todo if first_of.setdefault(rows[i]["sha256"], i) == i]
    worker_detect, gpu = gpu_detector(detect, prep)
    factory = partial(_make_state, worker_detect, cfg)
    paths = [rows[i]["path"] for i in unique]
    for i, res in zip(unique, map_items(inspect_image, paths, factory, cfg.workers, prep, desc="filter", gpu=gpu)):
        cache.put(rows[i]["sha256"], res)
    for i in todo:
        results[i] = cache.get(rows[i]["sha256"])
    accepted = [i for i, res in enumerate(results) if res["reason"] is None]
    dups = {} if cfg.phash_max_distance < 0 else near_duplicates([rows[i]["path"] for i in accepted], [results[i]["phash"] for i in accepted],
                           cfg.phash_max_distance)
    for k, (j, d) in dups.items():
        i = accepted[k]
        results[i] = {"reason": "near_duplicate",
                      "detail": f"perceptual hash within {d} bits of {rows[accepted[j]]['path']}"}
    kept, rejected, counts = [], [], {}
    for r, res in zip(rows, results):
        base = {"path": r["path"], "identity": r["identity"], "sha256": r["sha256"]}
        if res["reason"] is None:
            kept.append({**base, **{k: v for k, v in res.items() if k != "reason"}})
        else:
            counts[res["reason"]] = counts.get(res["reason"], 0) + 1
            rejected.append({**base, "reason": res["reason"], "detail": res.get("detail")})
    write_table(kept, out_filtered, FILTERED)
    write_table(rejected, out_rejects, REJECTS)
    cache.save(keep={r["sha256"] for r in rows if r["sha256"]})
    assert len(kept) + len(rejected) == len(rows)
    return {"input": len(rows), "accepted": len(kept), "rejected": len(rejected), "inspected": len(unique),
            "reasons": dict(sorted(counts.items()))}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--manifest", default=str(DATA.manifest))
    p.add_argument("--out", default=str(DATA.filtered))
    p.add_argument("--rejects", default=str(DATA.rejects))
    a = p.parse_args(argv)
    p = params.load(a.params)
    m = run(p.filter, p.detect, a.manifest, a.out, a.rejects, a.cache_dir, p.prep)
    write_metrics(a.metrics, m)
    print(f"filter: {m['input']} in -> {m['accepted']} accepted, {m['rejected']} rejected {m['reasons']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
